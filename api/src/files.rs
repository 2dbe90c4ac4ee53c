//! The files a lease carries: what the broker renders and the sidecar
//! writes into the pod's volume.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// A credential's files: file name to content. The content is wiped from
/// memory when dropped.
pub type Files = BTreeMap<String, Zeroizing<Vec<u8>>>;
