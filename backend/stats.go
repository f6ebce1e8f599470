package backend

import (
	"sync"
	"sync/atomic"
	"time"
)

// rateSlots is the number of samples kept for the per-second rates; with
// samples every RateInterval the window spans rateSlots-1 intervals (2 s).
const rateSlots = 5

// RateInterval is how often Sample should be called for the rates to be exact.
const RateInterval = 500 * time.Millisecond

// rateWindow is the longest span the per-second rates average over.
const rateWindow = 2 * time.Second

// Stats are live counters of a backend or a server. All methods are safe for
// concurrent use; the byte counters are updated while data flows.
// Rx counts bytes from the backend to the client, Tx from the client to the backend.
type Stats struct {
	active  atomic.Int64
	total   atomic.Uint64
	refused atomic.Uint64
	rx      atomic.Uint64
	tx      atomic.Uint64

	rxRate atomic.Uint64 // bytes per second over the sample window
	txRate atomic.Uint64

	mu      sync.Mutex // guards the sample ring (Sample only)
	samples [rateSlots]sample
	next    int
	filled  int
}

type sample struct {
	at     time.Time
	rx, tx uint64
}

// Snapshot is a point-in-time copy of Stats.
type Snapshot struct {
	Active   int64  `json:"active_connections"`  // open connections
	Total    uint64 `json:"total_connections"`   // connections served since start
	Refused  uint64 `json:"refused_connections"` // connections refused (limits, access, failed dials)
	Rx       uint64 `json:"rx"`                  // bytes backend -> client
	Tx       uint64 `json:"tx"`                  // bytes client -> backend
	RxSecond uint64 `json:"rx_second"`           // rx per second over the last 2 s
	TxSecond uint64 `json:"tx_second"`           // tx per second over the last 2 s
}

// Active returns the number of open connections.
func (s *Stats) Active() int64 { return s.active.Load() }

// AddActive changes the open-connection count by d (server-level counters;
// backends use Backend.Acquire/Release).
func (s *Stats) AddActive(d int64) { s.active.Add(d) }

// AddTotal counts one accepted (backend: elected and dialled) connection.
func (s *Stats) AddTotal() { s.total.Add(1) }

// AddRefused counts one connection that was refused.
func (s *Stats) AddRefused() { s.refused.Add(1) }

// AddRx counts n bytes sent from backend to client.
func (s *Stats) AddRx(n int64) { s.rx.Add(uint64(n)) }

// AddTx counts n bytes sent from client to backend.
func (s *Stats) AddTx(n int64) { s.tx.Add(uint64(n)) }

// RateSum returns rx_second + tx_second, the load figure of leastbandwidth.
func (s *Stats) RateSum() uint64 { return s.rxRate.Load() + s.txRate.Load() }

// Snapshot returns a copy of the counters.
func (s *Stats) Snapshot() Snapshot {
	return Snapshot{
		Active: s.active.Load(), Total: s.total.Load(), Refused: s.refused.Load(),
		Rx: s.rx.Load(), Tx: s.tx.Load(), RxSecond: s.rxRate.Load(), TxSecond: s.txRate.Load(),
	}
}

// Sample records the byte counters at now and recomputes rx/tx per second over
// the samples of the last two seconds. Call it every RateInterval from one
// goroutine per Stats (or a shared ticker).
func (s *Stats) Sample(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := sample{at: now, rx: s.rx.Load(), tx: s.tx.Load()}
	if s.filled > 0 {
		// The base is the oldest sample at most rateWindow old, so the window
		// stays within 2 s even when Sample is called less regularly than
		// RateInterval; if every sample is older, the newest one is the base.
		base := s.samples[(s.next-1+rateSlots)%rateSlots]
		for i := s.filled; i > 0; i-- {
			c := s.samples[(s.next-i+rateSlots)%rateSlots]
			if now.Sub(c.at) <= rateWindow {
				base = c
				break
			}
		}
		if d := now.Sub(base.at).Seconds(); d > 0 {
			s.rxRate.Store(uint64(float64(cur.rx-base.rx) / d))
			s.txRate.Store(uint64(float64(cur.tx-base.tx) / d))
		}
	}
	s.samples[s.next] = cur
	s.next = (s.next + 1) % rateSlots
	if s.filled < rateSlots-1 {
		s.filled++
	}
}
