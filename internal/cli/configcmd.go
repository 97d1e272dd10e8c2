package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"

	"github.com/pipeops/pipeops-vm-agent/installer"
	"github.com/pipeops/pipeops-vm-agent/internal/config"
)

func newConfigCommand(e *env) *cli.Command {
	pathFlag := &cli.StringFlag{Name: "config", Usage: "config file (default $PIPEOPS_CONFIG or /etc/pipeops/agent.yaml)"}
	load := func(c *cli.Context) (*config.Config, []string, error) {
		return config.Load(config.Options{Path: c.String("config"), Getenv: e.getenv,
			Decrypt: installer.DecryptToken(c.Context, nil)})
	}
	return &cli.Command{
		Name:  "config",
		Usage: "check or show the agent's configuration",
		Subcommands: []*cli.Command{
			{
				Name:  "validate",
				Usage: "load and validate the configuration exactly as the agent would",
				Flags: []cli.Flag{pathFlag},
				Action: func(c *cli.Context) error {
					cfg, warnings, err := load(c)
					if err == nil {
						err = cfg.Validate()
					}
					for _, w := range warnings {
						fmt.Fprintln(e.stderr, "warning:", w)
					}
					if err != nil {
						if errors.Is(err, config.ErrInvalid) {
							return withCode(ExitError, fmt.Errorf("invalid configuration:\n%w", err))
						}
						return err
					}
					fmt.Fprintf(e.stdout, "configuration is valid (sources: %v; token from %s)\n", cfg.Sources, cfg.TokenSource)
					return nil
				},
			},
			{
				Name:  "show",
				Usage: "print the merged configuration with secrets redacted",
				Flags: []cli.Flag{pathFlag, jsonFlag},
				Action: func(c *cli.Context) error {
					cfg, _, err := load(c)
					if err != nil {
						return err
					}
					b, err := json.MarshalIndent(cfg, "", "  ") // Secret fields marshal as [redacted]
					if err != nil {
						return err
					}
					if !c.Bool("json") {
						if b, err = jsonToYAML(b); err != nil {
							return err
						}
					}
					_, err = e.stdout.Write(append(b, '\n'))
					return err
				},
			},
		},
	}
}

// jsonToYAML renders the JSON form of the config (where secrets are already
// redacted and the json tags name the keys) as block YAML: keys sorted,
// two-space indent, list items level with their key.
func jsonToYAML(j []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(j, &v); err != nil { // JSON is YAML; ints stay ints
		return nil, err
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	enc.CompactSeqIndent()
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
