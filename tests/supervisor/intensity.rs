//! (Cases to come.)

use crate::common::Case;

pub(crate) fn cases() -> Vec<Case> {
    Vec::new()
}
