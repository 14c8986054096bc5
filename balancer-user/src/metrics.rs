//! Metrics endpoint (placeholder; being written).
