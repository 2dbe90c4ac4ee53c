//! ferry's admission webhook library: the pure mutation from a pod to the
//! patch that injects the ferry sidecar.
