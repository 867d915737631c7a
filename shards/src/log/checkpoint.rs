//! The per-partition checkpoint of the end covered by fdatasync.
//!
//! File `durable.checkpoint` in the partition directory, 28 bytes:
//! `[magic u32 "RCKP"][version u32][durable_offset i64][log_start_offset i64][crc32 u32]`
//! (crc32fast over the first 24 bytes). Written lazily (tmp file, fdatasync,
//! rename), so it may lag the truth but is never ahead of it. Recovery uses
//! it to tell a torn tail (bad data past it: cut off) from corruption of
//! acknowledged data (bad data below it: reported, partition fenced).

pub const CHECKPOINT_FILE: &str = "durable.checkpoint";
pub const CHECKPOINT_TMP_FILE: &str = "durable.checkpoint.tmp";
pub const CHECKPOINT_MAGIC: u32 = 0x5243_4b50;
pub const CHECKPOINT_VERSION: u32 = 1;
pub const CHECKPOINT_SIZE: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// Every offset below this was covered by a completed fdatasync.
    pub durable_offset: i64,
    pub log_start_offset: i64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_SIZE] {
        let mut out = [0u8; CHECKPOINT_SIZE];
        out[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
        out[8..16].copy_from_slice(&self.durable_offset.to_be_bytes());
        out[16..24].copy_from_slice(&self.log_start_offset.to_be_bytes());
        let crc = crc32fast::hash(&out[0..24]);
        out[24..28].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a checkpoint; `Err` names what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() < CHECKPOINT_SIZE {
            return Err(format!(
                "checkpoint is {} bytes, expected {CHECKPOINT_SIZE}",
                bytes.len()
            ));
        }
        let magic = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
        let version = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        if magic != CHECKPOINT_MAGIC || version != CHECKPOINT_VERSION {
            return Err(format!("bad checkpoint magic/version {magic:#x}/{version}"));
        }
        let stored = u32::from_be_bytes(bytes[24..28].try_into().unwrap());
        let computed = crc32fast::hash(&bytes[0..24]);
        if stored != computed {
            return Err(format!(
                "checkpoint CRC32 mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        Ok(Checkpoint {
            durable_offset: i64::from_be_bytes(bytes[8..16].try_into().unwrap()),
            log_start_offset: i64::from_be_bytes(bytes[16..24].try_into().unwrap()),
        })
    }
}
