//! Random bytes from the OS, drawn through a small per-thread pool: one
//! `getrandom` call per 4 KiB instead of one per stream id, nonce, stanza id
//! or TLS random (a login made 13 such calls, an archived message one).
//! Every byte handed out is erased from the pool, so none is used twice.

use std::cell::RefCell;

const POOL: usize = 4096;
/// Requests larger than this go to the OS directly.
const DIRECT: usize = 256;

struct Pool {
    buf: Box<[u8; POOL]>,
    /// Bytes before this index are used up.
    pos: usize,
}

thread_local! {
    static THREAD_POOL: RefCell<Pool> = RefCell::new(Pool {
        buf: Box::new([0u8; POOL]),
        pos: POOL,
    });
}

/// Fill `out` with random bytes from the OS.
pub fn fill(out: &mut [u8]) {
    if out.len() > DIRECT {
        getrandom::fill(out).expect("OS random source");
        return;
    }
    THREAD_POOL.with_borrow_mut(|p| {
        if POOL - p.pos < out.len() {
            getrandom::fill(&mut p.buf[..]).expect("OS random source");
            p.pos = 0;
        }
        let taken = &mut p.buf[p.pos..p.pos + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        p.pos += out.len();
    });
}

/// `n` random bytes.
pub fn bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill(&mut v);
    v
}

/// rustls's randoms (TLS randoms, session ids, tickets) from the same pool.
#[derive(Debug)]
pub struct PooledRandom;

impl rustls::crypto::SecureRandom for PooledRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        fill(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_bytes_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        // 3 pool refills' worth of 16-byte draws: all distinct.
        for _ in 0..(3 * super::POOL / 16) {
            assert!(seen.insert(super::bytes(16)));
        }
        assert_eq!(super::bytes(1000).len(), 1000);
    }
}
