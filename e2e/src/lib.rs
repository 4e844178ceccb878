//! WireKube end-to-end: the lab with a real Kubernetes control plane, scenarios, the demo

#![forbid(unsafe_code)]
pub mod kind_check;
pub mod kube_lab;
pub mod monitoring;
pub mod scenario;
