package locality

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// maxIntelBody bounds the ip-intel answer (a few hundred bytes in practice).
const maxIntelBody = 64 << 10

// Intel is the part of the ip-intel answer (§4.1) the agent uses, cleaned:
// CountryCode is two upper-case letters or empty, other strings are
// printable and at most 128 bytes, CloudProvider is normalised.
type Intel struct {
	CountryCode     string
	Country         string
	Region          string
	Org             string
	ASN             string
	CloudProvider   string
	DetectionMethod string
}

// intelWire is the answer, with or without the {"success":…,"data":…} wrapper.
type intelWire struct {
	CountryCode     string          `json:"country_code"`
	Country         string          `json:"country"`
	Region          string          `json:"region"`
	Org             string          `json:"org"`
	ASN             json.RawMessage `json:"asn"` // "AS24940" or 24940
	CloudProvider   string          `json:"cloud_provider"`
	DetectionMethod string          `json:"detection_method"`
}

// intelFor returns the control plane's view of ip, cached per address for
// CacheTTL; nil when the lookup is off, ip is not public, or it failed.
func (l *Locator) intelFor(ctx context.Context, ip string) *Intel {
	if l.o.IntelURL == "" {
		return nil
	}
	if _, err := parsePublic(ip); err != nil {
		return nil // the control plane knows nothing about private addresses
	}
	l.mu.Lock()
	if c, ok := l.intel[ip]; ok && l.o.Now().Sub(c.at) < l.o.CacheTTL {
		l.mu.Unlock()
		return c.info
	}
	l.mu.Unlock()
	info, err := l.fetchIntel(ctx, ip)
	if err != nil {
		l.o.Log.Warn("ip-intel lookup failed; registering without it", logging.KeyErr, err)
		return nil
	}
	l.mu.Lock()
	l.intel = map[string]intelCache{ip: {at: l.o.Now(), info: info}} // one address at a time
	l.mu.Unlock()
	return info
}

// fetchIntel is GET <intel base><ip>, no credentials, 4 s.
func (l *Locator) fetchIntel(ctx context.Context, ip string) (*Intel, error) {
	ctx, cancel := context.WithTimeout(ctx, l.o.IntelTimeout)
	defer cancel()
	u := l.o.IntelURL + url.PathEscape(ip)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := l.o.Intel.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ip-intel: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ip-intel: HTTP %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxIntelBody+1))
	if err != nil {
		return nil, fmt.Errorf("ip-intel: %w", err)
	}
	if len(b) > maxIntelBody {
		return nil, fmt.Errorf("ip-intel: answer larger than %d bytes", maxIntelBody)
	}
	return parseIntel(b)
}

func parseIntel(b []byte) (*Intel, error) {
	var outer struct {
		Success *bool           `json:"success"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &outer); err != nil {
		return nil, fmt.Errorf("ip-intel: answer is not a JSON object: %w", err)
	}
	if outer.Success != nil && !*outer.Success {
		return nil, fmt.Errorf("ip-intel: the control plane answered success: false")
	}
	body := b
	if len(outer.Data) > 0 && string(outer.Data) != "null" {
		body = outer.Data
	}
	var w intelWire
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("ip-intel: unexpected answer: %w", err)
	}
	in := &Intel{
		CountryCode: countryCode(w.CountryCode), Country: text(w.Country), Region: text(w.Region),
		Org: text(w.Org), ASN: asn(w.ASN), DetectionMethod: text(w.DetectionMethod),
	}
	if p := text(w.CloudProvider); p != "" {
		in.CloudProvider = NormaliseProvider(p)
	}
	return in, nil
}

// countryCode accepts two letters (ISO 3166-1 alpha-2), upper-cased.
func countryCode(s string) string {
	s = strings.ToUpper(strings.TrimSpace(s))
	if len(s) != 2 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z' {
		return ""
	}
	return s
}

// text keeps a printable value of at most 128 bytes; anything else is dropped.
func text(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 128 {
		return ""
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return ""
		}
	}
	return s
}

// asn is the answer's asn, a string ("AS24940") or a number (24940).
func asn(raw json.RawMessage) string {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return text(s)
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return ""
	}
	return text(n.String())
}
