package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
	"github.com/pipeops/pipeops-vm-agent/internal/controlplane"
	"github.com/pipeops/pipeops-vm-agent/internal/devplane"
	"github.com/pipeops/pipeops-vm-agent/internal/health"
	"github.com/pipeops/pipeops-vm-agent/internal/kubeproxy"
	"github.com/pipeops/pipeops-vm-agent/internal/state"
)

func init() { benches["proxy"] = benchProxy }

// benchProxy measures small GETs through the whole proxy path (HTTP client
// → devplane front door → WebSocket → agent control-plane client →
// kubeproxy → backend) against the same GETs sent straight to the backend,
// in the same run and process, and prints throughput, p50, p99 and ratios.
// Targets (issue 5, 2 cores): ratio ≥ 0.7, ≥ 10,000 req/s proxied, added
// p99 ≤ 5 ms. It asserts nothing. With -target apiserver it measures the
// real binaries against the real API server instead (proxy_apiserver.go).
func benchProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	conc := fs.Int("c", 64, "concurrent clients")
	dur := fs.Duration("d", 5*time.Second, "duration of each measured run")
	cpuProfile := fs.String("cpuprofile", "", "trivial: write a CPU profile of the proxied run to this file")
	target := fs.String("target", "trivial", "backend: trivial (an in-process HTTP server, everything in this process) or apiserver (the real agent and devplane binaries and the real kube-apiserver)")
	var ao apiserverOptions
	ao.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *target {
	case "apiserver":
		ao.conc, ao.dur = *conc, *dur
		return benchProxyAPIServer(ao)
	case "trivial":
	default:
		return fmt.Errorf("-target %q: want trivial or apiserver", *target)
	}
	body := []byte(`{"kind":"Status","apiVersion":"v1","status":"Success","code":200}`)
	backend, err := proxyServe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	if err != nil {
		return err
	}
	plane := devplane.New(devplane.Config{Tokens: []string{"bench"}})
	planeURL, err := proxyServe(plane.Handler())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	identity := &rest.Config{Host: backend, BearerToken: "bench-sa-token"}
	p, err := kubeproxy.New(kubeproxy.Options{RESTConfig: func() *rest.Config { return identity }, MaxInFlight: 1024})
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.PipeOps.APIURL, cfg.PipeOps.Token = planeURL, "bench"
	st, err := state.Open("", nil)
	if err != nil {
		return err
	}
	cp, err := controlplane.New(controlplane.Options{Config: cfg, AgentID: "bench-agent", State: st, Health: health.New(nil),
		Cluster: proxyBenchCluster{}, Log: slog.New(slog.DiscardHandler), K3sTokenPath: "/nonexistent"})
	if err != nil {
		return err
	}
	cp.Register(p)
	go func() { _ = cp.Run(ctx) }()
	id := devplane.ClusterIDFor("bench-agent")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, ok := plane.Cluster(id); ok && c.Connected && c.Mode == devplane.KindGateway {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent did not connect to the devplane gateway within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	direct := backend + "/api/v1/namespaces/default/pods/x"
	proxied := devplane.FrontDoorURL(planeURL, id) + "/api/v1/namespaces/default/pods/x"

	fmt.Printf("proxy bench: %d concurrent clients, %s per run, GOMAXPROCS-bound, same backend\n", *conc, *dur)
	_ = proxyLoad(direct, *conc, time.Second) // warm-up
	_ = proxyLoad(proxied, *conc, time.Second)
	d := proxyLoad(direct, *conc, *dur)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	pr := proxyLoad(proxied, *conc, *dur)
	pprof.StopCPUProfile()
	row := func(name string, r proxyResult) {
		fmt.Printf("  %-8s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d\n", name, r.rps, proxyMs(r.p50), proxyMs(r.p99), r.errors)
	}
	row("direct", d)
	row("proxied", pr)
	fmt.Printf("  ratio proxied/direct throughput: %.2f (target ≥ 0.70)\n", pr.rps/d.rps)
	fmt.Printf("  proxied throughput: %.0f req/s (target ≥ 10000)\n", pr.rps)
	fmt.Printf("  added p99: %.2f ms (target ≤ 5 ms)\n", proxyMs(pr.p99-d.p99))
	return nil
}

type proxyBenchCluster struct{}

func (proxyBenchCluster) Version(context.Context) (string, error) { return "v1.36.3", nil }
func (proxyBenchCluster) Credentials(context.Context) (string, string, error) {
	return "bench-token", "Q0EK", nil
}
func (proxyBenchCluster) Telemetry(context.Context) (controlplane.Telemetry, error) {
	return controlplane.Telemetry{}, nil
}

// serve runs h on a loopback port and returns its base URL.
func proxyServe(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { _ = (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(ln) }()
	return "http://" + ln.Addr().String(), nil
}

type proxyResult struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
	elapsed  time.Duration
}

func proxyMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// load runs conc clients doing GET url back to back for dur.
func proxyLoad(url string, conc int, dur time.Duration) proxyResult {
	return proxyLoadHeader(url, nil, conc, dur)
}

// proxyLoadHeader is proxyLoad with extra request headers.
func proxyLoadHeader(url string, hdr http.Header, conc int, dur time.Duration) proxyResult {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc, DisableCompression: true}}
	defer client.CloseIdleConnections()
	var (
		mu     sync.Mutex
		lat    []time.Duration
		errs   atomic.Int64
		wg     sync.WaitGroup
		stopAt = time.Now().Add(dur)
	)
	start := time.Now()
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 4096)
			for time.Now().Before(stopAt) {
				t0 := time.Now()
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err != nil {
					errs.Add(1)
					return
				}
				if hdr != nil {
					req.Header = hdr.Clone()
				}
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := proxyResult{errors: errs.Load(), rps: float64(len(lat)) / elapsed.Seconds(), elapsed: elapsed}
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}
