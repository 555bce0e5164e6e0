"""Generated gRPC/protobuf stubs for the coordinator service (regenerate with scripts/gen_proto.sh)."""
