//! CEL evaluation with the Kubernetes CEL library functions WireKube's CRDs and policies use.
