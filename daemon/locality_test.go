package daemon

import "testing"

func TestPublicAddressLookupsAreOffForAControlPlaneOnAPrivateNetwork(t *testing.T) {
	for url, want := range map[string]bool{
		"https://api.pipeops.io": false, "http://127.0.0.1:8090": true, "http://localhost:8090": true,
		"https://10.1.2.3": true, "https://[::1]:443": true, "https://192.168.1.5/base": true, "https://203.0.113.7": false,
		"https://cp.internal.example": false, // names are not resolved
	} {
		if got := privateControlPlane(url); got != want {
			t.Errorf("privateControlPlane(%q) = %v; want %v", url, got, want)
		}
	}
}
