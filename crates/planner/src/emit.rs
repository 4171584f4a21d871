//! The plan document a partition becomes: kept shards keep their ids and
//! groups, new shards get the smallest free ids and `base + id` groups,
//! devices and topic routes by shard id, the generation one above the
//! current plan's.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
};

use shardcast_plan::{DeviceSpec, Plan, ShardSpec, TopicSpec};

use crate::{NONE, PlannerError, partition::Partition};

/// What [`Partition::emit`] hands back.
pub(crate) struct Emitted {
    pub(crate) plan: Plan,
    pub(crate) assignment: Vec<u32>,
    pub(crate) loads: Vec<f64>,
    /// Shards that were not in the current plan.
    pub(crate) created: usize,
}

impl<'a> Partition<'a> {
    /// The plan document: kept shards keep their ids and groups; new shards
    /// get the smallest free ids and `base + id` groups.
    pub(crate) fn emit(
        &self,
        current: Option<&Plan>,
        mut specs: Vec<Option<ShardSpec>>,
    ) -> Result<Emitted, PlannerError> {
        let res = &self.inst.resources;
        specs.resize(self.load.len(), None);
        let mut ids: Vec<Option<u32>> = vec![None; self.load.len()];
        let mut created = 0;
        let mut groups = Groups::new(
            res,
            specs
                .iter()
                .enumerate()
                .filter(|&(s, _)| self.members[s] > 0)
                .filter_map(|(_, spec)| spec.as_ref()),
        );
        let mut shards = Vec::new();
        let mut index = vec![NONE; self.load.len()];
        let mut loads = Vec::new();
        for s in 0..self.load.len() {
            if self.members[s] == 0 {
                continue;
            }
            let mut spec = match &specs[s] {
                Some(spec) => spec.clone(),
                None => {
                    created += 1;
                    groups.next_shard(res)?
                }
            };
            // The class it holds under this plan's policy.
            spec.class = (!self.inst.policy.separate_by.is_empty())
                .then(|| self.inst.class_names[self.class[s] as usize].clone());
            ids[s] = Some(spec.id);
            index[s] = shards.len() as u32;
            loads.push(self.load[s]);
            shards.push(spec);
        }
        let id_of = |s: u32| ids[s as usize].expect("active shard has an id");
        let devices = (0..self.inst.devices.len())
            .map(|d| DeviceSpec {
                id: self.inst.devices[d].clone(),
                address: self.inst.addresses[d].clone(),
                shard: id_of(self.assign[d]),
                group: self.inst.groups[d].clone(),
            })
            .collect();
        // Ids the gateway registered (REGISTER) stay with their topic.
        let registered: HashMap<&str, &Vec<u16>> = current
            .into_iter()
            .flat_map(|c| &c.topics)
            .filter(|t| !t.mqttsn_registered_ids.is_empty())
            .map(|t| (t.name.as_str(), &t.mqttsn_registered_ids))
            .collect();
        let topics = self
            .pins
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| {
                let mut shards: Vec<u32> = p.iter().map(|&(s, _)| id_of(s)).collect();
                shards.sort_unstable();
                TopicSpec {
                    name: self.inst.topics[t].clone(),
                    shards,
                    mqttsn_predefined_id: self.inst.predefined[t],
                    mqttsn_registered_ids: registered
                        .get(self.inst.topics[t].as_str())
                        .map_or_else(Vec::new, |ids| (*ids).clone()),
                }
            })
            .collect();
        let assignment = self.assign.iter().map(|&s| index[s as usize]).collect();
        let plan = Plan {
            generation: match current {
                None => 1,
                Some(c) => c
                    .generation
                    .checked_add(1)
                    .ok_or(PlannerError::GenerationExhausted)?,
            },
            shards,
            devices,
            topics,
            policy: self.inst.policy.clone(),
        };
        Ok(Emitted {
            plan,
            assignment,
            loads,
            created,
        })
    }
}
/// Ids and multicast groups for new shards: the smallest ids free in the
/// plan, groups `base + id` (v4, and v6 when a base is given), never one a
/// kept shard holds, always multicast. Running past the top of the address
/// space is an error, not a wrap.
struct Groups {
    base4: Ipv4Addr,
    base6: Option<Ipv6Addr>,
    used_ids: BTreeSet<u32>,
    used_v4: BTreeSet<Ipv4Addr>,
    used_v6: BTreeSet<Ipv6Addr>,
    next: u32,
}

impl Groups {
    fn new<'s>(
        res: &crate::workload::Resources,
        kept: impl Iterator<Item = &'s ShardSpec>,
    ) -> Self {
        let mut g = Groups {
            base4: res.group_v4_base.parse().expect("validated"),
            base6: res
                .group_v6_base
                .as_ref()
                .map(|b| b.parse().expect("validated")),
            used_ids: BTreeSet::new(),
            used_v4: BTreeSet::new(),
            used_v6: BTreeSet::new(),
            next: 1,
        };
        for spec in kept {
            g.used_ids.insert(spec.id);
            g.used_v4.extend(
                spec.group_v4
                    .as_ref()
                    .and_then(|a| a.parse::<Ipv4Addr>().ok()),
            );
            g.used_v6.extend(
                spec.group_v6
                    .as_ref()
                    .and_then(|a| a.parse::<Ipv6Addr>().ok()),
            );
        }
        g
    }

    fn next_shard(&mut self, res: &crate::workload::Resources) -> Result<ShardSpec, PlannerError> {
        loop {
            let id = self.next;
            let exhausted = |base: &Option<String>| PlannerError::GroupsExhausted {
                base: base.clone().unwrap_or_default(),
                id,
            };
            self.next = id
                .checked_add(1)
                .ok_or_else(|| exhausted(&Some(res.group_v4_base.clone())))?;
            let v4 = u32::from(self.base4)
                .checked_add(id)
                .map(Ipv4Addr::from)
                .filter(|a| a.is_multicast())
                .ok_or_else(|| exhausted(&Some(res.group_v4_base.clone())))?;
            let v6 = match self.base6 {
                None => None,
                Some(b) => Some(
                    u128::from(b)
                        .checked_add(id as u128)
                        .map(Ipv6Addr::from)
                        .filter(|a| a.is_multicast())
                        .ok_or_else(|| exhausted(&res.group_v6_base))?,
                ),
            };
            if self.used_ids.contains(&id)
                || self.used_v4.contains(&v4)
                || v6.is_some_and(|v| self.used_v6.contains(&v))
            {
                continue;
            }
            self.used_ids.insert(id);
            self.used_v4.insert(v4);
            self.used_v6.extend(v6);
            return Ok(ShardSpec {
                id,
                group_v4: Some(v4.to_string()),
                group_v6: v6.map(|v| v.to_string()),
                egress: res.egress.clone(),
                port: None,
                capacity: Some(res.shard_capacity),
                class: None,
            });
        }
    }
}
