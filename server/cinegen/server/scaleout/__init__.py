"""Scale-out: a job split into work units (units), run as an Open Job Description farm job (openjd,
export) or as Ray tasks behind the same gRPC service (ray_executor)."""
