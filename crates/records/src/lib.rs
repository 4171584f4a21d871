//! The CSV files shardcast's control plane exchanges, read and written in
//! one place so that every reader reports a bad line the same way.
//!
//! - [`record`]: the record reader (line numbers, header, field count)
//!   that the history, forecast and device-status readers share;
//! - [`history`]: the history CSV (`timestamp,topic,group,count`) the
//!   daemon exports and imports and the forecaster reads.
//!
//! ```
//! let rows = shardcast_records::history::parse_csv("1700000040,temp/a,hall,4\n")?;
//! assert_eq!(rows[0].count, 4);
//! # Ok::<(), shardcast_records::RecordError>(())
//! ```

pub mod history;
pub mod record;

pub use record::{Columns, RecordError, echo, records};
