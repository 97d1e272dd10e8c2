package cli

import "testing"

// The expected text is what sigs.k8s.io/yaml's JSONToYAML printed before
// config show moved to the module's one YAML library: keys sorted, two
// spaces, list items level with their key, block text kept as a literal.
func TestConfigShowRendersTheSameBlockYAML(t *testing.T) {
	in := `{"version":1,"agent":{"name":"vm 1","labels":{"team":"a: b","env":"on"},"public_ip_services":[]},` +
		`"kubernetes":{"protected_namespaces":["prod","2026-01-02"],"ca_cert_data":"-----BEGIN-----\nAAAA\n-----END-----\n"},` +
		`"tunnel":{"forwards":[{"name":"ssh","local_addr":"127.0.0.1:22"}],"max_streams":1024},"pipeops":{"token":"[redacted]"}}`
	want := `agent:
  labels:
    env: "on"
    team: 'a: b'
  name: vm 1
  public_ip_services: []
kubernetes:
  ca_cert_data: |
    -----BEGIN-----
    AAAA
    -----END-----
  protected_namespaces:
  - prod
  - "2026-01-02"
pipeops:
  token: '[redacted]'
tunnel:
  forwards:
  - local_addr: 127.0.0.1:22
    name: ssh
  max_streams: 1024
version: 1
`
	got, err := jsonToYAML([]byte(in))
	if err != nil || string(got) != want {
		t.Fatalf("jsonToYAML = %v\n%s\nwant\n%s", err, got, want)
	}
}
