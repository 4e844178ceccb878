//! WireKube operator: PathPlanner, mesh and relay controllers
