//! Randomness for jitter and generation names, from the OS CSPRNG through
//! ring (already linked for TLS).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

fn random_u64() -> Option<u64> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A number in `[0, 1)`; 0.5 if the OS has no randomness to give (jitter
/// then degrades to none, which is safe).
pub fn unit_interval() -> f64 {
    match random_u64() {
        // 53 random bits: every value is exactly representable.
        Some(bits) => (bits >> 11) as f64 / (1u64 << 53) as f64,
        None => 0.5,
    }
}

/// A number in `[-1, 1)`.
pub fn symmetric() -> f64 {
    unit_interval() * 2.0 - 1.0
}

/// 16 hex digits that do not repeat within this process, random if the OS
/// allows: names a new generation directory.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let value = random_u64().unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        nanos ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
    });
    format!("{value:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_their_ranges() {
        for _ in 0..1000 {
            let unit = unit_interval();
            assert!((0.0..1.0).contains(&unit));
            assert!((-1.0..1.0).contains(&symmetric()));
        }
        assert_ne!(unique_suffix(), unique_suffix());
        assert_eq!(unique_suffix().len(), 16);
    }
}
