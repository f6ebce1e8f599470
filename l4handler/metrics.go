package l4handler

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/discovery"
	"github.com/caddy-between/between/listeners"
	"github.com/caddy-between/between/udpsession"
	"github.com/prometheus/client_golang/prometheus"
)

// fetchCounter is where a state's discovery_fetches_total comes from: its
// Runner's counts plus the totals of the state it replaced, so the counter
// does not fall back when a handler's config changes.
type fetchCounter struct {
	runner *discovery.Runner
	base   discovery.Counts
}

// fetchCounts returns the state's discovery totals, inherited ones included;
// zero before the state has started.
func (st *state) fetchCounts() discovery.Counts {
	fc := st.fetches.Load()
	if fc == nil {
		return discovery.Counts{}
	}
	c := fc.runner.Counts()
	c.FetchesOK += fc.base.FetchesOK
	c.FetchesFailed += fc.base.FetchesFailed
	c.WatchErrors += fc.base.WatchErrors
	return c
}

// collector exports the statistics of the running handlers to Prometheus. It
// keeps no series of its own: every scrape reads the counters of the states
// that survive reloads, so counters never reset on a config change, and a
// handler or backend that is gone simply emits nothing (cardinality follows
// the running config).
type collector struct {
	handlers func() []*Handler
}

// metricsCollector is the one collector of the process; each config's
// registry gets it once.
var metricsCollector = &collector{handlers: running.all}

// registerMetrics adds the collector to a config's metrics registry (the one
// the admin endpoint's /metrics serves). A registry that already has it is
// left as it is.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	if err := reg.Register(metricsCollector); err != nil {
		var dup prometheus.AlreadyRegisteredError
		if errors.As(err, &dup) {
			return nil
		}
		return fmt.Errorf("registering between metrics: %w", err)
	}
	return nil
}

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("between_"+name, help, labels, nil)
}

var (
	descServerBackends = newDesc("server_backends", "Backends the handler's discovery currently lists.", "server")
	descServerActive   = newDesc("server_active_connections", "Open client connections of the handler.", "server")
	descServerTotal    = newDesc("server_connections_total", "Client connections the handler accepted.", "server")
	descServerRefused  = newDesc("server_refused_connections_total", "Client connections the handler refused (access, limits, no backend).", "server")
	descServerRx       = newDesc("server_rx_bytes_total", "Bytes sent from backends to the handler's clients.", "server")
	descServerTx       = newDesc("server_tx_bytes_total", "Bytes sent from the handler's clients to backends.", "server")

	descBackendUp      = newDesc("backend_up", "1 if the backend is healthy (takes new connections), 0 if not.", "server", "backend")
	descBackendActive  = newDesc("backend_active_connections", "Open connections to the backend.", "server", "backend")
	descBackendTotal   = newDesc("backend_connections_total", "Connections the handler made to the backend.", "server", "backend")
	descBackendRefused = newDesc("backend_refused_connections_total", "Connections to the backend that failed (dial errors, limits).", "server", "backend")
	descBackendRx      = newDesc("backend_rx_bytes_total", "Bytes sent from the backend to clients.", "server", "backend")
	descBackendTx      = newDesc("backend_tx_bytes_total", "Bytes sent from clients to the backend.", "server", "backend")

	descDiscoveryFetches = newDesc("discovery_fetches_total", "Discovery fetches of the handler, by result (ok, error).", "server", "result")

	descUDPSessions = newDesc("udp_sessions_active", "Open virtual sessions (client to one elected backend) of a UDP handler.", "server")
	descUDPPackets  = newDesc("udp_packets_total", "Datagrams a UDP handler relayed, by direction (in: client to backend, out: backend to client).", "server", "direction")
	descUDPDropped  = newDesc("udp_dropped_packets_total", "Datagrams a UDP handler dropped, by reason.", "server", "reason")

	descListenerSessions = newDesc("udp_listener_sessions", "Client sessions open on a between+udp socket.", "listen")
	descListenerPackets  = newDesc("udp_listener_packets_total", "Datagrams a between+udp socket received.", "listen")
	descListenerDropped  = newDesc("udp_listener_dropped_packets_total", "Datagrams a between+udp socket dropped before any handler saw them, by reason (queue_full, max_sessions, backlog; kernel: the socket's receive buffer was full).", "listen", "reason")
)

// Describe sends the descriptors of every metric the collector emits.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descServerBackends, descServerActive, descServerTotal, descServerRefused, descServerRx, descServerTx,
		descBackendUp, descBackendActive, descBackendTotal, descBackendRefused, descBackendRx, descBackendTx,
		descDiscoveryFetches, descUDPSessions, descUDPPackets, descUDPDropped,
		descListenerSessions, descListenerPackets, descListenerDropped,
	} {
		ch <- d
	}
}

// Collect reads the running handlers' counters.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	collectListeners(ch)
	for _, h := range c.handlers() {
		st := h.state
		if st == nil {
			continue
		}
		name := h.Name
		st.mu.Lock()
		backends := st.sortedLocked()
		st.mu.Unlock()

		s := st.stats.Snapshot()
		ch <- prometheus.MustNewConstMetric(descServerBackends, prometheus.GaugeValue, float64(len(backends)), name)
		ch <- prometheus.MustNewConstMetric(descServerActive, prometheus.GaugeValue, float64(s.Active), name)
		ch <- prometheus.MustNewConstMetric(descServerTotal, prometheus.CounterValue, float64(s.Total), name)
		ch <- prometheus.MustNewConstMetric(descServerRefused, prometheus.CounterValue, float64(s.Refused), name)
		ch <- prometheus.MustNewConstMetric(descServerRx, prometheus.CounterValue, float64(s.Rx), name)
		ch <- prometheus.MustNewConstMetric(descServerTx, prometheus.CounterValue, float64(s.Tx), name)

		if h.udp != nil {
			u := st.udp
			ch <- prometheus.MustNewConstMetric(descUDPSessions, prometheus.GaugeValue, float64(u.Sessions.Load()), name)
			ch <- prometheus.MustNewConstMetric(descUDPPackets, prometheus.CounterValue, float64(u.PacketsIn.Load()), name, "in")
			ch <- prometheus.MustNewConstMetric(descUDPPackets, prometheus.CounterValue, float64(u.PacketsOut.Load()), name, "out")
			for r := range udpsession.NumReasons {
				ch <- prometheus.MustNewConstMetric(descUDPDropped, prometheus.CounterValue, float64(u.Dropped[r].Load()), name, r.String())
			}
		}

		f := st.fetchCounts()
		ch <- prometheus.MustNewConstMetric(descDiscoveryFetches, prometheus.CounterValue, float64(f.FetchesOK), name, "ok")
		ch <- prometheus.MustNewConstMetric(descDiscoveryFetches, prometheus.CounterValue, float64(f.FetchesFailed), name, "error")

		slices.SortFunc(backends, func(a, b *backend.Backend) int { return strings.Compare(a.Address(), b.Address()) })
		for _, b := range backends {
			addr := b.Address()
			up := 0.0
			if st.health.Healthy(addr) {
				up = 1
			}
			bs := b.Stats.Snapshot()
			ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, name, addr)
			ch <- prometheus.MustNewConstMetric(descBackendActive, prometheus.GaugeValue, float64(bs.Active), name, addr)
			ch <- prometheus.MustNewConstMetric(descBackendTotal, prometheus.CounterValue, float64(bs.Total), name, addr)
			ch <- prometheus.MustNewConstMetric(descBackendRefused, prometheus.CounterValue, float64(bs.Refused), name, addr)
			ch <- prometheus.MustNewConstMetric(descBackendRx, prometheus.CounterValue, float64(bs.Rx), name, addr)
			ch <- prometheus.MustNewConstMetric(descBackendTx, prometheus.CounterValue, float64(bs.Tx), name, addr)
		}
	}
}

// collectListeners reports the between+udp sockets open in this process.
func collectListeners(ch chan<- prometheus.Metric) {
	for _, l := range listeners.UDPListenerStats() {
		ch <- prometheus.MustNewConstMetric(descListenerSessions, prometheus.GaugeValue, float64(l.Sessions), l.Addr)
		ch <- prometheus.MustNewConstMetric(descListenerPackets, prometheus.CounterValue, float64(l.Packets), l.Addr)
		ch <- prometheus.MustNewConstMetric(descListenerDropped, prometheus.CounterValue, float64(l.DroppedQueueFull), l.Addr, "queue_full")
		ch <- prometheus.MustNewConstMetric(descListenerDropped, prometheus.CounterValue, float64(l.DroppedMaxSessions), l.Addr, "max_sessions")
		ch <- prometheus.MustNewConstMetric(descListenerDropped, prometheus.CounterValue, float64(l.DroppedBacklog), l.Addr, "backlog")
		ch <- prometheus.MustNewConstMetric(descListenerDropped, prometheus.CounterValue, float64(l.DroppedKernel), l.Addr, "kernel")
	}
}

var _ prometheus.Collector = (*collector)(nil)
