//! The real Kubernetes control plane in the network lab, as a library.
//!
//! [`pki`] makes a lab CA and every certificate and key the components need; [`controlplane`]
//! runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
//! `scripts/build-k8s.sh`) in a lab host with real TLS, RBAC + Node authorization and the
//! production admission plugins; [`kubelet`] is the lab kubelet that runs a node's pods as
//! processes in the lab. See `docs/lab.md`.

pub mod cloud;
pub mod controlplane;
pub mod kubeconfig;
pub mod kubelet;
pub mod node;
pub mod pki;
