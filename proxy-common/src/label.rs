//! The label of a service frontend (`SVCNAT_LABELS`): its name, so that
//! `svcnat inspect` can name services from the pinned maps alone.

/// Length of a service label.
pub const SVC_LABEL_LEN: usize = 96;

/// The name of a service frontend (`namespace/name:port`), NUL-padded, so
/// that `svcnat inspect` can name services from the pinned maps alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcLabel {
    /// UTF-8, NUL-padded; cut at a character boundary when too long.
    pub name: [u8; SVC_LABEL_LEN],
}

impl SvcLabel {
    /// A label holding as much of `s` as fits.
    pub fn new(s: &str) -> Self {
        let mut name = [0u8; SVC_LABEL_LEN];
        let mut end = s.len().min(SVC_LABEL_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        name[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self { name }
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(SVC_LABEL_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_cut_at_char_boundaries() {
        assert_eq!(SvcLabel::new("demo/web:http").as_str(), "demo/web:http");
        let long = "é".repeat(SVC_LABEL_LEN);
        let cut = SvcLabel::new(&long);
        assert!(cut.as_str().len() <= SVC_LABEL_LEN);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
        assert_eq!(cut.as_str().len() % 2, 0);
    }
}
