# The interface for people and CI alike: .ci/run only calls these targets.
MODULE  := github.com/pipeops/pipeops-vm-agent
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X $(MODULE)/internal/version.Version=$(VERSION) \
           -X $(MODULE)/internal/version.Commit=$(COMMIT) -X $(MODULE)/internal/version.Date=$(DATE)
BIN     := bin

.PHONY: build docs test lint demo clean k8s-bins host-test snapshot

# urfave_cli_no_docs keeps urfave/cli's man/markdown renderer out of
# pipeopsctl; only scripts/gendocs needs it.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -trimpath -tags urfave_cli_no_docs -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# Man pages and shell completion scripts, generated from the command
# definitions into build/docs (the packages ship them).
docs:
	go run ./scripts/gendocs build/docs

# Builds (cached) and starts a real Kubernetes control plane, then runs every
# test with the race detector. See scripts/test.sh.
test:
	scripts/test.sh

lint:
	scripts/lint.sh

# Builds everything, starts a local cluster, the reference control plane and
# the agent, and prints how to reach the cluster through the agent.
demo:
	scripts/demo.sh

k8s-bins:
	scripts/k8s/build.sh

clean:
	rm -rf $(BIN) dist build

# The host tier alone: packages, installer and unit under a real systemd (root).
host-test:
	scripts/host-test.sh

# A goreleaser snapshot (tar.gz, deb, rpm, checksums) in dist-snapshot/.
snapshot:
	scripts/host/release.sh dist-snapshot

bench-%:
	go run ./scripts/bench $*
