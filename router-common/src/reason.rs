//! Why the router did what it did with a packet.
//!
//! Every packet ends in exactly one of these, and each has a per-CPU counter
//! (index = discriminant). `Redirected` is the fast path; every other reason
//! is an `XDP_PASS` to the kernel stack: the router never drops what it does
//! not understand, it hands it on and counts it. A multi-shard publish ends
//! in XDP as `FannedOut` (handed to the TC fan-out program) or `Broadcast`
//! (redirected to every shard's copy at once); the fan-out or copy program
//! then counts each copy it sends as `Redirected` (or the reason a copy
//! could not go).

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $n:literal => $label:literal, )*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $( $(#[$doc])* $name = $n, )* }

        impl Reason {
            /// All reasons, in counter-index order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$name, )* ];

            /// Stable snake_case label (used in `stats`, metrics and docs).
            pub const fn label(self) -> &'static str {
                match self { $( Reason::$name => $label, )* }
            }
        }
    };
}

reasons! {
    /// Rewritten and redirected to a shard's multicast group.
    Redirected = 0 => "redirected",
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or more than one VLAN tag.
    NotIp = 1 => "not_ip",
    /// IP but not UDP.
    NotUdp = 2 => "not_udp",
    /// A header (Ethernet, VLAN, IP, UDP) is cut short or inconsistent.
    Truncated = 3 => "truncated",
    /// An IPv4 fragment: the router only looks at whole datagrams.
    Fragment = 4 => "fragment",
    /// IPv6 with extension headers before UDP.
    Ipv6ExtHeader = 5 => "ipv6_ext_header",
    /// UDP to a port the router does not serve.
    OtherPort = 6 => "other_port",
    /// MQTT-SN message other than PUBLISH: for the gateway.
    MqttSnControl = 7 => "mqttsn_control",
    /// MQTT-SN PUBLISH with QoS 1 or 2: needs acknowledgements, for the gateway.
    MqttSnQos = 8 => "mqttsn_qos",
    /// MQTT-SN length field disagrees with the datagram length.
    MqttSnBadLength = 9 => "mqttsn_bad_length",
    /// MQTT-SN PUBLISH that breaks the spec (reserved topic type or id, ...).
    MqttSnMalformed = 10 => "mqttsn_malformed",
    /// CoAP confirmable message: needs an ACK, for userspace.
    CoapConfirmable = 11 => "coap_confirmable",
    /// CoAP message that is not a NON POST/PUT request.
    CoapNotPublish = 12 => "coap_not_publish",
    /// CoAP request whose Uri-Path is not under the pub/sub prefix.
    CoapOtherPath = 13 => "coap_other_path",
    /// CoAP message that breaks RFC 7252 framing.
    CoapMalformed = 14 => "coap_malformed",
    /// Topic name longer than the data plane hashes.
    TopicTooLong = 15 => "topic_too_long",
    /// No plan installed yet.
    NoPlan = 16 => "no_plan",
    /// Topic has no route in the installed plan.
    NoRoute = 17 => "no_route",
    /// Route spans several shards and the frame could not carry its route
    /// to the fan-out program (the driver keeps no XDP metadata): to the
    /// stack, unrouted.
    MultiShard = 18 => "multi_shard",
    /// The shard has no multicast group of the packet's IP family.
    NoGroupForFamily = 19 => "no_group_for_family",
    /// TTL / hop limit would reach zero: the stack answers with ICMP.
    TtlExpired = 20 => "ttl_expired",
    /// IPv6 UDP with a zero checksum (invalid; RFC 8200 section 8.1).
    ZeroChecksumV6 = 21 => "zero_checksum_v6",
    /// The shard's egress is missing from the egress device map.
    EgressMissing = 22 => "egress_missing",
    /// A per-CPU working entry (scratch, CoAP window, fan-out sequence)
    /// could not be read. (The configuration itself, global data, is
    /// always there: zeroed until `attach` writes it, when no port matches
    /// and frames count as `other_port`.)
    NoConfig = 23 => "no_config",
    /// CoAP message whose options (or payload marker) run past the first
    /// `coap::WINDOW` bytes, the part the XDP program copies out and
    /// validates: for userspace.
    CoapBeyondWindow = 24 => "coap_beyond_window",
    /// CoAP message with more options than the XDP program examines
    /// (`coap::MAX_OPTIONS`): not known to be well formed, for userspace.
    CoapTooManyOptions = 25 => "coap_too_many_options",
    /// Route spans several shards: handed (with its route, in the frame's
    /// metadata) to the fan-out program at TC ingress, which sends one copy
    /// per shard and counts each as `redirected`.
    FannedOut = 26 => "fanned_out",
    /// Not passed: a multi-shard publish redirected as a broadcast into
    /// the device map of its route's egress, where the copy program
    /// rewrites each copy for its shard and counts it as `redirected`.
    Broadcast = 27 => "broadcast",
}

/// Number of reason counters.
pub const REASON_COUNT: usize = Reason::ALL.len();

impl Reason {
    /// The reason with counter index `i`.
    pub fn from_index(i: usize) -> Option<Reason> {
        Reason::ALL.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(Reason::from_index(i), Some(*r));
        }
        for a in Reason::ALL {
            for b in Reason::ALL {
                if a != b {
                    assert_ne!(a.label(), b.label());
                }
            }
        }
    }
}
