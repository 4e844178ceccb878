//! WireKube end-to-end: network-namespace lab, Kubernetes API test server, scenarios
