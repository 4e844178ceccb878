//! WireKube end-to-end: network-namespace lab, Kubernetes API test server, scenarios
pub mod apiserver;
pub mod kube_lab;
pub mod scenario;
