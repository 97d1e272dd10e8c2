package kubectl

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/pipeops/pipeops-vm-agent/internal/kubetest"
	"github.com/pipeops/pipeops-vm-agent/tests/testbin"
)

// slug is d's name as a Kubernetes name part.
func (d door) slug() string { return strings.NewReplacer(" ", "", ",", "-").Replace(d.name) }

// execPlain: stdout and stderr of a real process on the node, and a failing
// command's failure. kwok v0.8.0 reports a non-zero exit as an error status
// that names the code ("exit status 3") rather than as the code itself, so
// kubectl exits 1 with that message; the relay carries the status frame
// unchanged (kubeproxy's TestKubectlExecWorksThroughTheAgent shows an
// exact code reaching kubectl). The translated path flattens stdout and
// stderr into one stream (§6.8): both arrive, on stdout.
func (s *stack) execPlain(t *testing.T, d door, pod string) {
	out, errOut, code := s.run(t, d.opts, "", "exec", pod, "--", "sh", "-c", "pwd; echo to-stdout; echo to-stderr >&2")
	if code != 0 {
		t.Fatalf("kubectl exec exit code %d; want 0\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	wantOut := s.node.ExecDir + "\nto-stdout\n"
	if d.opts.Translated {
		// One stream: the two lines of stdout and the one of stderr, the
		// latter anywhere among them.
		merged := strings.Replace(out, "to-stderr\n", "", 1)
		if merged != wantOut || errOut != "" {
			t.Errorf("stdout %q, stderr %q; want %q with to-stderr among its lines (channels merged) and no stderr", out, errOut, wantOut)
		}
	} else if out != wantOut || errOut != "to-stderr\n" {
		t.Errorf("stdout %q, stderr %q; want %q and %q (the node's working directory, channels apart)", out, errOut, wantOut, "to-stderr\n")
	}

	out, errOut, code = s.run(t, d.opts, "", "exec", pod, "--", "sh", "-c", "echo before-failing; exit 3")
	if code == 0 || !strings.Contains(errOut, "exit status 3") || out != "before-failing\n" {
		t.Errorf("failing exec: exit code %d, stdout %q, stderr %q; want a non-zero code, the output and \"exit status 3\" from the status channel", code, out, errOut)
	}
}

// execStdin: what kubectl reads from its stdin reaches the process. The
// command reads lines, not to EOF: kwok never closes a command's stdin.
func (s *stack) execStdin(t *testing.T, d door, pod string) {
	out, errOut, code := s.run(t, d.opts, "first line\nsecond line\n", "exec", "-i", pod, "--", "sh", "-c", `read a; read b; echo "got $b then $a"`)
	if code != 0 || out != "got second line then first line\n" {
		t.Errorf("exec -i: exit code %d, stdout %q, stderr %q; want 0 and %q", code, out, errOut, "got second line then first line\n")
	}
}

// execTTY drives kubectl exec -it on a pseudo-terminal, like a person: the
// shell sees a terminal of the size kubectl's terminal has, and follows it
// when it is resized (kubectl sends the resize on channel 4).
func (s *stack) execTTY(t *testing.T, d door, pod string) {
	cmd := s.command(t.Context(), d.opts, "exec", "-it", pod, "--", "sh")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	screen := &testbin.Output{}
	go func() { _, _ = io.Copy(screen, ptmx) }()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// Type the command until its answer shows (the first keystrokes may
	// reach the shell before it prints a prompt; the resize travels apart
	// from what is typed).
	sizeIs := func(want string) {
		t.Helper()
		mark := "SIZE-" + want + "-END"
		next := time.Now()
		testbin.Eventually(t, 30*time.Second, "the shell reports a "+want+" terminal", func() bool {
			if time.Now().After(next) {
				_, _ = ptmx.WriteString("echo SIZE-$(stty size)-END\r")
				next = time.Now().Add(time.Second)
			}
			return strings.Contains(screen.String(), mark)
		}, screen.String)
	}
	sizeIs("24 80")
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	sizeIs("40 132")
	if _, err := ptmx.WriteString("exit 0\r"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("kubectl exec -it after exit 0: %v\n%s", waitErr, screen)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl exec -it did not end after the shell exited\n%s", screen)
	}
}

// attach follows what the container writes (kwok's attach reads the pod's
// log file from its end; it does not read stdin). Ctrl-C ends kubectl.
func (s *stack) attach(t *testing.T, d door) {
	pod := "tail-" + d.slug()
	file := filepath.Join(t.TempDir(), "attach.log")
	writeFile(t, file, "")
	s.env.SetPodLogs(t, pod, file)
	s.env.RunningPod(t, pod)
	// kwok learns of the pod's Attach object through a watch; until then
	// an attach follows the node's default file, so start again if needed.
	var k *kubectl
	n, restart := 0, time.Time{}
	testbin.Eventually(t, 60*time.Second, "attach shows a line written after it started", func() bool {
		if k == nil || time.Now().After(restart) {
			if k != nil {
				_ = k.cmd.Process.Kill()
			}
			k = s.start(t, d.opts, "", "attach", pod)
			restart = time.Now().Add(10 * time.Second)
		}
		n++
		appendFile(t, file, kubetest.CRILine("stdout", "attached-line-"+strings.Repeat("x", n%3)))
		return strings.Contains(k.stdout.String(), "attached-line-")
	}, func() string { return k.stdout.String() + k.stderr.String() })
	_ = k.cmd.Process.Signal(syscall.SIGINT)
	k.wait(t, 30*time.Second)
}

// copyBothWays: kubectl cp runs tar in the pod through exec, in both
// directions; 1 MiB of random bytes must arrive intact.
func (s *stack) copyBothWays(t *testing.T, d door) {
	pod := "files-" + d.slug()
	podDir := t.TempDir()
	s.env.SetPodExecDir(t, pod, podDir)
	s.env.RunningPod(t, pod)
	testbin.Eventually(t, 30*time.Second, "exec in "+pod+" runs in its own directory", func() bool {
		out, _, _ := s.run(t, d.opts, "", "exec", pod, "--", "pwd")
		return out == podDir+"\n"
	})
	local := t.TempDir()
	up := randomBytes(t, 1<<20)
	writeFile(t, filepath.Join(local, "up.bin"), string(up))
	if out, errOut, code := s.run(t, d.opts, "", "cp", filepath.Join(local, "up.bin"), pod+":up.bin"); code != 0 {
		t.Fatalf("kubectl cp into the pod: exit code %d\n%s%s", code, out, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(podDir, "up.bin")); err != nil || !bytes.Equal(got, up) {
		t.Errorf("the file in the pod has %d bytes (%v); want the %d bytes sent, intact", len(got), err, len(up))
	}
	down := randomBytes(t, 1<<20)
	writeFile(t, filepath.Join(podDir, "down.bin"), string(down))
	if out, errOut, code := s.run(t, d.opts, "", "cp", pod+":down.bin", filepath.Join(local, "down.bin")); code != 0 {
		t.Fatalf("kubectl cp out of the pod: exit code %d\n%s%s", code, out, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(local, "down.bin")); err != nil || !bytes.Equal(got, down) {
		t.Errorf("the copied file has %d bytes (%v); want the pod's %d bytes, intact", len(got), err, len(down))
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}
