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

// Counters is the one declaration of the figures kept for a backend or a
// server: Stats holds them live as atomics, Snapshot is a copy of them and
// their JSON form, so the two cannot drift apart.
type Counters[I, U any] struct {
	Active   I `json:"active_connections"`  // open connections
	Total    U `json:"total_connections"`   // connections served since start
	Refused  U `json:"refused_connections"` // connections refused (limits, access, failed dials)
	Rx       U `json:"rx"`                  // bytes backend -> client
	Tx       U `json:"tx"`                  // bytes client -> backend
	RxSecond U `json:"rx_second"`           // rx per second over the last 2 s
	TxSecond U `json:"tx_second"`           // tx per second over the last 2 s
}

// Snapshot is a point-in-time copy of Stats.
type Snapshot = Counters[int64, uint64]

// Stats are live counters of a backend or a server. All methods are safe for
// concurrent use; the byte counters are updated while data flows.
// Rx counts bytes from the backend to the client, Tx from the client to the backend.
type Stats struct {
	c Counters[atomic.Int64, atomic.Uint64] // RxSecond and TxSecond are written by Sample

	mu      sync.Mutex // guards the sample ring (Sample only)
	samples [rateSlots]sample
	next    int
	filled  int
}

type sample struct {
	at     time.Time
	rx, tx uint64
}

// Active returns the number of open connections.
func (s *Stats) Active() int64 { return s.c.Active.Load() }

// AddActive changes the open-connection count by d (server-level counters;
// backends use Backend.Acquire/Release).
func (s *Stats) AddActive(d int64) { s.c.Active.Add(d) }

// TryAddActive counts one more open connection unless that would exceed max
// (max <= 0: no limit). It reports whether the connection was counted.
func (s *Stats) TryAddActive(max int64) bool {
	if max <= 0 {
		s.c.Active.Add(1)
		return true
	}
	for {
		n := s.c.Active.Load()
		if n >= max {
			return false
		}
		if s.c.Active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// AddTotal counts one accepted (backend: elected and dialled) connection.
func (s *Stats) AddTotal() { s.c.Total.Add(1) }

// AddRefused counts one connection that was refused.
func (s *Stats) AddRefused() { s.c.Refused.Add(1) }

// AddRx counts n bytes sent from backend to client.
func (s *Stats) AddRx(n int64) { s.c.Rx.Add(uint64(n)) }

// AddTx counts n bytes sent from client to backend.
func (s *Stats) AddTx(n int64) { s.c.Tx.Add(uint64(n)) }

// RateSum returns rx_second + tx_second, the load figure of leastbandwidth.
func (s *Stats) RateSum() uint64 { return s.c.RxSecond.Load() + s.c.TxSecond.Load() }

// Snapshot returns a copy of the counters.
func (s *Stats) Snapshot() Snapshot {
	return Snapshot{
		Active: s.c.Active.Load(), Total: s.c.Total.Load(), Refused: s.c.Refused.Load(),
		Rx: s.c.Rx.Load(), Tx: s.c.Tx.Load(), RxSecond: s.c.RxSecond.Load(), TxSecond: s.c.TxSecond.Load(),
	}
}

// Sample records the byte counters at now and recomputes rx/tx per second over
// the samples of the last two seconds. Call it every RateInterval from one
// goroutine per Stats (or a shared ticker).
func (s *Stats) Sample(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := sample{at: now, rx: s.c.Rx.Load(), tx: s.c.Tx.Load()}
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
			s.c.RxSecond.Store(uint64(float64(cur.rx-base.rx) / d))
			s.c.TxSecond.Store(uint64(float64(cur.tx-base.tx) / d))
		}
	}
	s.samples[s.next] = cur
	s.next = (s.next + 1) % rateSlots
	if s.filled < rateSlots-1 {
		s.filled++
	}
}
