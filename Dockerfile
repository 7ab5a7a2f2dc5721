# ddm-update-operator: a multi-stage build and a small non-root runtime image.
#
#   docker build -t registry.example.com/platform/ddm-update-operator:0.1.0 .
#
# The chart (charts/ddm-update-operator) runs it as uid/gid 65532 with a read-only root
# filesystem and the args `run --listen=0.0.0.0:8080 --admin-listen=0.0.0.0:9090
# --data-dir=/var/lib/ddm-update-operator ...` (8080: devices; 9090: metrics, probes, /api/v1).
# tests/it/helm_chart.rs checks that this file and the chart agree (user, port, entrypoint, the
# files the build needs). No container engine runs in CI: it is reviewed, not built, there.

# The toolchain the project is tested with (Cargo.toml's rust-version is the minimum).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo.toml declares the benches: their files must exist for any build.
COPY benches ./benches
COPY src ./src
# The catalog shipped in the binary (the fallback when Apple cannot be reached).
COPY examples/catalog/pmv.json ./examples/catalog/pmv.json
RUN cargo build --release --locked --bin ddm-update-operator \
 && install -D -m 0755 target/release/ddm-update-operator /out/ddm-update-operator

# glibc and CA certificates; no shell, no package manager. "nonroot" is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ddm-update-operator /usr/local/bin/ddm-update-operator
USER 65532:65532
EXPOSE 8080 9090
# The operator shuts down on SIGINT; as PID 1 it has no SIGTERM handler (see the README).
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/ddm-update-operator"]
CMD ["run", "--listen=0.0.0.0:8080", "--admin-listen=0.0.0.0:9090", "--data-dir=/var/lib/ddm-update-operator"]
