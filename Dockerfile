# The feedstream binary on Debian, for docker-compose.yml. RocksDB and librdkafka compile
# from source in the build stage (about 15 minutes on 2 cores).
FROM rust:1-bookworm AS build
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends cmake libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin feedstream \
 && cp target/release/feedstream /usr/local/bin/feedstream

FROM debian:bookworm-slim
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/feedstream /usr/local/bin/feedstream
USER nobody
ENTRYPOINT ["feedstream"]
