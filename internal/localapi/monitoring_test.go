package localapi

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/localclient"
)

// fakeMonitoring is a Monitoring whose actions are the test's functions.
type fakeMonitoring struct {
	status        apitype.MonitoringStatus
	InstallFunc   func(ctx context.Context, emit func(apitype.MonitoringEvent)) error
	UninstallFunc func(ctx context.Context, emit func(apitype.MonitoringEvent)) error
}

var _ Monitoring = (*fakeMonitoring)(nil)

func (f *fakeMonitoring) Status() apitype.MonitoringStatus { return f.status }
func (f *fakeMonitoring) Install(ctx context.Context, emit func(apitype.MonitoringEvent)) error {
	return f.InstallFunc(ctx, emit)
}
func (f *fakeMonitoring) Uninstall(ctx context.Context, emit func(apitype.MonitoringEvent)) error {
	return f.UninstallFunc(ctx, emit)
}

func serveMonitoring(t *testing.T, m Monitoring) *localclient.Client {
	t.Helper()
	sock := filepath.Join(shortDir(t), "agent.sock")
	serve(t, New(Options{Socket: sock, Status: fixedStatus{}, Monitoring: m}))
	return &localclient.Client{Socket: sock}
}

func releaseEvent(name, state string) apitype.MonitoringEvent {
	return apitype.MonitoringEvent{Release: apitype.Release{Name: name, State: state}}
}

func TestAMonitoringActionStreamsEachEventThenAFinalLineWithTheStatus(t *testing.T) {
	m := &fakeMonitoring{status: apitype.MonitoringStatus{Enabled: true, Profile: "small"}}
	m.InstallFunc = func(_ context.Context, emit func(apitype.MonitoringEvent)) error {
		emit(releaseEvent("loki", apitype.ReleaseInstalling))
		emit(releaseEvent("loki", apitype.ReleaseReady))
		return nil
	}
	m.UninstallFunc = func(context.Context, func(apitype.MonitoringEvent)) error {
		return errors.New("reach the Kubernetes API: connection refused")
	}
	c := serveMonitoring(t, m)

	var got []apitype.MonitoringEvent
	if err := c.MonitoringAction(context.Background(), "install", func(ev apitype.MonitoringEvent) error {
		got = append(got, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Release.State != apitype.ReleaseInstalling || got[1].Release.State != apitype.ReleaseReady {
		t.Fatalf("install events = %+v; want installing, ready, then the final line", got)
	}
	if last := got[2]; !last.Done || last.Error != "" || last.Status == nil || !reflect.DeepEqual(*last.Status, m.status) || last.Time.IsZero() {
		t.Fatalf("final line = %+v; want done with the status and no error", last)
	}

	// A failure that is not a refusal still ends in a done line that names it.
	got = nil
	if err := c.MonitoringAction(context.Background(), "uninstall", func(ev apitype.MonitoringEvent) error {
		got = append(got, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].Done || got[0].Error != "reach the Kubernetes API: connection refused" || got[0].Status == nil {
		t.Fatalf("uninstall events = %+v; want one done line carrying the error", got)
	}
}

func TestARefusedMonitoringActionIsAnErrorWithItsHintNotAStream(t *testing.T) {
	refusal := &apitype.Error{Code: apitype.CodeBadRequest, Message: "the monitoring stack is disabled", Hint: "enable it"}
	m := &fakeMonitoring{InstallFunc: func(context.Context, func(apitype.MonitoringEvent)) error { return refusal }}
	c := serveMonitoring(t, m)
	lines := 0
	err := c.MonitoringAction(context.Background(), "install", func(apitype.MonitoringEvent) error { lines++; return nil })
	var ae *apitype.Error
	if !errors.As(err, &ae) || ae.Code != apitype.CodeBadRequest || ae.Hint != "enable it" || lines != 0 {
		t.Fatalf("MonitoringAction = %v after %d lines; want bad_request with the hint and no stream", err, lines)
	}
	st, err := c.Monitoring(context.Background())
	if err != nil || st.Enabled {
		t.Fatalf("GET /v1/monitoring = %+v, %v", st, err)
	}
}

func TestWithoutMonitoringItsRoutesAreNotServed(t *testing.T) {
	sock := filepath.Join(shortDir(t), "agent.sock")
	serve(t, New(Options{Socket: sock, Status: fixedStatus{}}))
	err := (&localclient.Client{Socket: sock}).Do(context.Background(), http.MethodGet, "/v1/monitoring", nil, nil)
	if err == nil {
		t.Fatal("GET /v1/monitoring answered without a monitoring stack")
	}
}
