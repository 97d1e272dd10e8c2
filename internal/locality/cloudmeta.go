package locality

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// DefaultMetadataURL is the link-local address of the clouds' instance
// metadata services. The agent asks it only with agent.cloud_metadata: true.
const DefaultMetadataURL = "http://169.254.169.254"

// metadataTimeout bounds each metadata request: the service answers in
// milliseconds where it exists, and elsewhere nothing answers at all.
const metadataTimeout = time.Second

// cloudProbe is one provider's metadata request for the instance's region.
type cloudProbe struct {
	provider string
	path     string
	header   [2]string
	token    bool                // AWS IMDSv2: PUT for a session token first
	region   func(string) string // from the answer
}

var cloudProbes = []cloudProbe{
	{provider: "aws", path: "/latest/meta-data/placement/region", token: true, region: strings.TrimSpace},
	{provider: "gcp", path: "/computeMetadata/v1/instance/zone", header: [2]string{"Metadata-Flavor", "Google"},
		// projects/123/zones/europe-west1-b → europe-west1
		region: func(s string) string {
			z := s[strings.LastIndexByte(s, '/')+1:]
			if i := strings.LastIndexByte(z, '-'); i > 0 {
				return z[:i]
			}
			return z
		}},
	{provider: "azure", path: "/metadata/instance/compute/location?api-version=2021-02-01&format=text",
		header: [2]string{"Metadata", "true"}, region: strings.TrimSpace},
	{provider: "digitalocean", path: "/metadata/v1/region", region: strings.TrimSpace},
	{provider: "hetzner", path: "/hetzner/v1/metadata/region", region: strings.TrimSpace},
}

// cloudMetadata asks the instance metadata service which cloud and region
// this VM is in. It goes direct, never through a proxy, and each request
// gives up after a second.
func (l *Locator) cloudMetadata(ctx context.Context) (provider, region string) {
	base := strings.TrimRight(l.o.MetadataURL, "/")
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: metadataTimeout}).DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	for _, p := range cloudProbes {
		var token string
		if p.token {
			token = l.metadataGet(ctx, client, http.MethodPut, base+"/latest/api/token", [2]string{"X-aws-ec2-metadata-token-ttl-seconds", "60"})
			if token == "" {
				continue
			}
		}
		h := p.header
		if p.token {
			h = [2]string{"X-aws-ec2-metadata-token", token}
		}
		if v := text(p.region(l.metadataGet(ctx, client, http.MethodGet, base+p.path, h))); v != "" {
			return p.provider, v
		}
	}
	return "", ""
}

func (l *Locator) metadataGet(ctx context.Context, client *http.Client, method, u string, h [2]string) string {
	ctx, cancel := context.WithTimeout(ctx, metadataTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return ""
	}
	if h[0] != "" {
		req.Header.Set(h[0], h[1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
