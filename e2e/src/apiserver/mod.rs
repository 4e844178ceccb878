pub mod schema; pub mod cel; pub mod rbac; pub mod admission;
