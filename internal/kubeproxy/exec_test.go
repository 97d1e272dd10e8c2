package kubeproxy_test

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
)

// fakeKubelet stands in for the API server in front of a kubelet, which the
// test cluster does not have: it serves one Running pod and answers exec
// over the WebSocket protocols real kubectl offers (v5.channel.k8s.io first,
// then v4): the command's words come back on stdout (channel 1), "oops" on
// stderr (channel 2), then a Status on channel 3 whose exit code is the
// command's last word when it is "exit=N".
func fakeKubelet(t *testing.T) *rest.Config {
	t.Helper()
	pod := `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-0","namespace":"app"},` +
		`"spec":{"containers":[{"name":"main","image":"x"}]},"status":{"phase":"Running"}}`
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api": // discovery, as kubectl asks for it
			fmt.Fprint(w, `{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}`)
		case r.URL.Path == "/apis":
			fmt.Fprint(w, `{"kind":"APIGroupList","apiVersion":"v1","groups":[]}`)
		case r.URL.Path == "/api/v1":
			fmt.Fprint(w, `{"kind":"APIResourceList","groupVersion":"v1","resources":[`+
				`{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},`+
				`{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]}]}`)
		case r.URL.Path == "/api/v1/namespaces/app/pods/web-0":
			fmt.Fprint(w, pod)
		case r.URL.Path == "/api/v1/namespaces/app/pods/web-0/exec" && websocket.IsWebSocketUpgrade(r):
			up := websocket.Upgrader{Subprotocols: []string{"v5.channel.k8s.io", "v4.channel.k8s.io"}}
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer ws.Close()
			cmd := r.URL.Query()["command"]
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{1}, strings.Join(cmd, " ")+"\n"...))
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{2}, "oops\n"...))
			status := `{"metadata":{},"status":"Success"}`
			if last := cmd[len(cmd)-1]; strings.HasPrefix(last, "exit=") {
				status = `{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code","reason":"NonZeroExitCode",` +
					`"details":{"causes":[{"reason":"ExitCode","message":"` + strings.TrimPrefix(last, "exit=") + `"}]}}`
			}
			_ = ws.WriteMessage(websocket.BinaryMessage, append([]byte{3}, status...))
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			_, _, _ = ws.ReadMessage() // wait for kubectl's close
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return &rest.Config{Host: srv.URL, BearerToken: "sa-token", TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}

// TestKubectlExecWorksThroughTheAgent runs the real kubectl exec (WebSocket,
// the default since kubectl 1.30) through devplane and the agent against
// the fake kubelet above. On the raw-frames path stdout and stderr stay
// apart; on the PipeOps control plane's translated path (§6.8) they arrive
// merged on stdout. On both the exact exit code survives: the status
// channel passes unchanged, or the front door restores it.
func TestKubectlExecWorksThroughTheAgent(t *testing.T) {
	env := kubetest.Cluster(t) // only for the kubectl binary
	s := startStack(t, fakeKubelet(t), nil)
	for _, tc := range []struct {
		name    string
		opts    devplane.FrontDoorOptions
		wantOut string
	}{
		{"raw frames", devplane.FrontDoorOptions{}, "echo hello\n"},
		{"translated channels", devplane.FrontDoorOptions{Translated: true}, "echo hello\noops\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := filepath.Join(t.TempDir(), "frontdoor.kubeconfig")
			if err := os.WriteFile(kc, devplane.FrontDoorKubeconfigWith(s.base, s.clusterID, "", tc.opts), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := kubectl(t, env, kc, "", "exec", "-n", "app", "web-0", "--", "echo", "hello")
			if err != nil {
				t.Fatalf("kubectl exec: %v", err)
			}
			if out != tc.wantOut {
				t.Errorf("stdout = %q; want %q", out, tc.wantOut)
			}
			_, err = kubectl(t, env, kc, "", "exec", "-n", "app", "web-0", "--", "false", "exit=3")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("kubectl exec of a failing command: %v; want exit code 3 from the status channel", err)
			}
			if !tc.opts.Translated && err != nil && !strings.Contains(err.Error(), "oops") {
				t.Errorf("stderr of kubectl = %v; want the command's stderr", err)
			}
		})
	}
}
