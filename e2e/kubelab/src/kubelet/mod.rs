//! The lab kubelet (being written).
