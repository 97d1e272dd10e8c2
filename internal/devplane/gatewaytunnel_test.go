package devplane

import "testing"

func TestForwardFlagsParseServicesForwardsAndUDP(t *testing.T) {
	cases := []struct {
		in   string
		want ListenSpec
		bad  bool
	}{
		{in: "web.default:80", want: ListenSpec{TunnelTarget: TunnelTarget{Service: "web", Namespace: "default", Port: 80}}},
		{in: "127.0.0.1:9000=web.default:80", want: ListenSpec{Listen: "127.0.0.1:9000", TunnelTarget: TunnelTarget{Service: "web", Namespace: "default", Port: 80}}},
		{in: "agent-http", want: ListenSpec{TunnelTarget: TunnelTarget{Service: "agent-http"}}},
		{in: "dns.kube-system:53/udp", want: ListenSpec{TunnelTarget: TunnelTarget{Protocol: "udp", Service: "dns", Namespace: "kube-system", Port: 53}}},
		{in: "web:80", bad: true},
		{in: "web.default:0", bad: true},
		{in: "", bad: true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseForwardFlag(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("ParseForwardFlag(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseForwardFlag(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestTheTunnelHeaderMatchesTheSpecLayout(t *testing.T) {
	got := encodeHeader(TunnelTarget{Protocol: "udp", Service: "ab", Namespace: "c", Port: 0x1234, TunnelID: ""})
	want := []byte{1, 2, 0x12, 0x34, 0, 2, 'a', 'b', 0, 1, 'c', 0, 0}
	if string(got) != string(want) {
		t.Fatalf("header = %v, want %v", got, want)
	}
}
