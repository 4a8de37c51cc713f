# syntax=docker/dockerfile:1
# Builds flowgate and flowgate-backends as CI does (same module, same Go
# toolchain line in go.mod), then runs them from a minimal image as a
# non-root user.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# modernc.org/sqlite is pure Go, so the binaries are static.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/flowgate ./cmd/flowgate \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/flowgate-backends ./cmd/flowgate-backends \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/flowgate /out/flowgate-backends /usr/local/bin/
# The embedded backends keep their SQLite database here.
COPY --from=build --chown=nonroot:nonroot /out/data /data
ENV FLOWGATE_DATA_DIR=/data FLOWGATE_LISTEN=:8080
VOLUME /data
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/flowgate"]
