package l4handler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/discovery"
	"github.com/prometheus/client_golang/prometheus"
)

// downTracker reports the listed addresses as unhealthy.
type downTracker struct {
	allHealthy
	down map[string]bool
}

func (d downTracker) Healthy(addr string) bool { return !d.down[addr] }

// metricsState is a started-looking state with known counters.
func metricsState(name string, down map[string]bool, backends ...*backend.Backend) *state {
	st := &state{name: name, stats: new(backend.Stats), discovered: map[string]*backend.Backend{}, health: downTracker{down: down}}
	for _, b := range backends {
		b.Freeze()
		st.discovered[b.Address()] = b
	}
	return st
}

func TestMetricsCollect(t *testing.T) {
	b1 := &backend.Backend{Host: "10.0.0.2", Port: "80", Weight: 1, Stats: new(backend.Stats)}
	b2 := &backend.Backend{Host: "10.0.0.1", Port: "80", Weight: 1, Stats: new(backend.Stats)}
	st := metricsState("web", map[string]bool{"10.0.0.2:80": true}, b1, b2)
	for range 5 {
		st.stats.AddTotal()
	}
	st.stats.AddRefused()
	st.stats.AddActive(2)
	st.stats.AddRx(1000)
	st.stats.AddTx(300)
	b2.Stats.AddTotal()
	b2.Stats.AddTotal()
	b2.Stats.AddActive(1)
	b2.Stats.AddRx(600)
	b2.Stats.AddTx(200)
	b1.Stats.AddTotal()
	b1.Stats.AddRefused()
	b1.Stats.AddRx(400)
	b1.Stats.AddTx(100)
	st.fetches.Store(&fetchCounter{runner: new(discovery.Runner), base: discovery.Counts{FetchesOK: 7, FetchesFailed: 2, WatchErrors: 1}})

	empty := metricsState("idle", nil) // not started yet: discovery counts are zero

	c := &collector{handlers: func() []*Handler {
		return []*Handler{{Name: "idle", state: empty}, {Name: "web", state: st}, {Name: "gone"}}
	}}
	want := `
# HELP between_backend_active_connections Open connections to the backend.
# TYPE between_backend_active_connections gauge
between_backend_active_connections{backend="10.0.0.1:80",server="web"} 1
between_backend_active_connections{backend="10.0.0.2:80",server="web"} 0
# HELP between_backend_connections_total Connections the handler made to the backend.
# TYPE between_backend_connections_total counter
between_backend_connections_total{backend="10.0.0.1:80",server="web"} 2
between_backend_connections_total{backend="10.0.0.2:80",server="web"} 1
# HELP between_backend_refused_connections_total Connections to the backend that failed (dial errors, limits).
# TYPE between_backend_refused_connections_total counter
between_backend_refused_connections_total{backend="10.0.0.1:80",server="web"} 0
between_backend_refused_connections_total{backend="10.0.0.2:80",server="web"} 1
# HELP between_backend_rx_bytes_total Bytes sent from the backend to clients.
# TYPE between_backend_rx_bytes_total counter
between_backend_rx_bytes_total{backend="10.0.0.1:80",server="web"} 600
between_backend_rx_bytes_total{backend="10.0.0.2:80",server="web"} 400
# HELP between_backend_tx_bytes_total Bytes sent from clients to the backend.
# TYPE between_backend_tx_bytes_total counter
between_backend_tx_bytes_total{backend="10.0.0.1:80",server="web"} 200
between_backend_tx_bytes_total{backend="10.0.0.2:80",server="web"} 100
# HELP between_backend_up 1 if the backend is healthy (takes new connections), 0 if not.
# TYPE between_backend_up gauge
between_backend_up{backend="10.0.0.1:80",server="web"} 1
between_backend_up{backend="10.0.0.2:80",server="web"} 0
# HELP between_discovery_fetches_total Discovery fetches of the handler, by result (ok, error).
# TYPE between_discovery_fetches_total counter
between_discovery_fetches_total{result="error",server="idle"} 0
between_discovery_fetches_total{result="error",server="web"} 2
between_discovery_fetches_total{result="ok",server="idle"} 0
between_discovery_fetches_total{result="ok",server="web"} 7
# HELP between_server_active_connections Open client connections of the handler.
# TYPE between_server_active_connections gauge
between_server_active_connections{server="idle"} 0
between_server_active_connections{server="web"} 2
# HELP between_server_backends Backends the handler's discovery currently lists.
# TYPE between_server_backends gauge
between_server_backends{server="idle"} 0
between_server_backends{server="web"} 2
# HELP between_server_connections_total Client connections the handler accepted.
# TYPE between_server_connections_total counter
between_server_connections_total{server="idle"} 0
between_server_connections_total{server="web"} 5
# HELP between_server_refused_connections_total Client connections the handler refused (access, limits, no backend).
# TYPE between_server_refused_connections_total counter
between_server_refused_connections_total{server="idle"} 0
between_server_refused_connections_total{server="web"} 1
# HELP between_server_rx_bytes_total Bytes sent from backends to the handler's clients.
# TYPE between_server_rx_bytes_total counter
between_server_rx_bytes_total{server="idle"} 0
between_server_rx_bytes_total{server="web"} 1000
# HELP between_server_tx_bytes_total Bytes sent from the handler's clients to backends.
# TYPE between_server_tx_bytes_total counter
between_server_tx_bytes_total{server="idle"} 0
between_server_tx_bytes_total{server="web"} 300
`
	// A pedantic registry checks that Collect emits only described metrics.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if got := gatherText(t, reg); got != strings.TrimSpace(want) {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, strings.TrimSpace(want))
	}

	// A backend that leaves discovery and a handler that leaves the running
	// config leave /metrics with them.
	st.mu.Lock()
	delete(st.discovered, "10.0.0.2:80")
	st.mu.Unlock()
	c.handlers = func() []*Handler { return []*Handler{{Name: "web", state: st}} }
	got := gatherText(t, reg)
	if strings.Contains(got, "10.0.0.2:80") || strings.Contains(got, `server="idle"`) {
		t.Errorf("a backend or handler that left is still exported:\n%s", got)
	}
	if !strings.Contains(got, `between_backend_up{backend="10.0.0.1:80",server="web"} 1`) {
		t.Errorf("the remaining backend is missing:\n%s", got)
	}
}

// gatherText renders what reg gathers in the text exposition format (HELP,
// TYPE and samples; families and series sorted as the registry sorts them).
func gatherText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", mf.GetName(), mf.GetHelp(), mf.GetName(), strings.ToLower(mf.GetType().String()))
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			fmt.Fprintf(&b, "%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), v)
		}
	}
	return strings.TrimSpace(b.String())
}

func TestRegisterMetricsOncePerRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for range 2 {
		if err := registerMetrics(reg); err != nil {
			t.Fatalf("registering into the same registry again: %v", err)
		}
	}
	if err := registerMetrics(nil); err != nil {
		t.Fatalf("no registry: %v", err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
