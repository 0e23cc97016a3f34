//! The fuzz input that the readers of shared memory are run over
//! (`crate::fuzz::shm`): a cursor that hands out words, short of bytes
//! as zeros once it runs out.

/// Words and bytes taken off the front of a fuzz input; zeros once it runs
/// out, so every input is a complete one.
#[derive(Debug)]
pub(crate) struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.fill(&mut b);
        b[0]
    }

    pub(crate) fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A position `base` plus a small offset most of the time (so that
    /// cursors are often close enough to pass their checks and reach the
    /// records), any value otherwise.
    pub(crate) fn near(&mut self, base: u64, span: u64) -> u64 {
        let raw = self.u64();
        if raw >> 62 == 0 {
            base.wrapping_add(raw % span.max(1))
        } else {
            raw
        }
    }

    /// Whatever is left.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }

    fn fill(&mut self, out: &mut [u8]) {
        let n = out.len().min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
    }
}
