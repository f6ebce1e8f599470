package healthchecks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-between/between/backend"
)

// Scheduler runs one active checker against every discovered backend of a
// server and applies passive health. One goroutine per backend runs the
// checks; the status of a backend is read without locks (Healthy), so the
// server may ask on every pool rebuild.
//
// Active checks: the first check runs at once, the next after the interval
// plus a random phase offset in [0, interval/10), later ones every interval
// ±5%, so that many backends do not fire together. Checks of one backend never
// overlap: a check that outlasts the interval delays the next. A check that
// does not end within the timeout counts as a failure, even when the checker
// ignores its context. A healthy backend goes down after `fails` consecutive
// failures, an unhealthy one comes up after `passes` consecutive successes;
// a success resets the failure count and a failure the success count.
//
// Passive health: MaxFails failed dials within FailDuration mark a healthy
// backend down; a successful dial clears the count. With an active checker the
// backend comes back after `passes` consecutive successful checks that started
// after it went down; without one, FailDuration after it went down.
type Scheduler struct {
	// Log, when set, receives messages about checks that do not change any
	// status, such as an exec check printing unexpected output (ErrNoVerdict).
	// Set it before the first Update; it is called from the check goroutines.
	Log func(addr string, msg string)

	// Inherit, when set before the first Update, gives backends it lists the
	// status from another scheduler (the one of the server config this
	// replaces) instead of initial_status, so that a config change does not
	// send traffic to a backend already known to be down. Used only with an
	// active checker, which goes on to confirm or correct it.
	Inherit map[string]bool

	active   Configured
	passive  *Passive
	onChange func(addr string, healthy bool, reason string)

	interval, timeout time.Duration
	fails, passes     int
	initialHealthy    bool
	port              string
	maxFails          int
	failWindow        time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards the fields of every target marked "mu", and stopped
	stopped bool
	// targets maps address to target; copy-on-write under mu, read without locks.
	targets atomic.Pointer[map[string]*target]
}

// target is the health state of one backend.
type target struct {
	addr    string
	cancel  context.CancelFunc
	healthy atomic.Bool // written under mu

	// mu
	b        backend.Backend // the backend to check (Port already replaced)
	epoch    uint64          // bumped by a passive mark-down: older checks no longer count
	failRun  int             // consecutive failed checks
	passRun  int             // consecutive successful checks
	dials    []time.Time     // failed dials within the window, oldest first
	recovery *time.Timer     // passive recovery without an active checker
	pending  []transition    // transitions not yet delivered to onChange
	notifyng bool            // a goroutine is delivering pending

	dialFails atomic.Int32 // len(dials), for the lock-free DialSucceeded fast path
}

type transition struct {
	healthy bool
	reason  string
}

// NewScheduler returns a Scheduler for a server. active may be nil (passive
// health only) and so may passive. onChange is called once for every
// transition, outside the Scheduler's locks, in order per backend, from the
// Scheduler's goroutines (or, for a passive mark-down, from the goroutine that
// called DialFailed); it may call Healthy and Update but must not call Stop.
// active must be provisioned.
func NewScheduler(active Configured, passive *Passive, onChange func(addr string, healthy bool, reason string)) *Scheduler {
	s := &Scheduler{active: active, passive: passive, onChange: onChange, initialHealthy: true}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	empty := map[string]*target{}
	s.targets.Store(&empty)
	if active != nil {
		c := active.Settings()
		s.interval = time.Duration(c.Interval)
		if s.interval <= 0 {
			s.interval = time.Second // Validate rejects this; stay safe anyway
		}
		s.timeout = c.timeout()
		s.fails = max(c.Fails, 1)
		s.passes = max(c.Passes, 1)
		s.initialHealthy = c.InitialStatus != "unhealthy"
		if c.Port > 0 {
			s.port = strconv.Itoa(c.Port)
		}
	}
	if passive != nil && passive.MaxFails > 0 {
		s.maxFails = passive.MaxFails
		s.failWindow = passive.window()
	}
	return s
}

// Update sets the current backends (identity b.Address()). New backends get
// the initial status and their checks start at once; removed backends stop
// being checked and their state is forgotten (a backend that comes back
// starts afresh). Attribute changes of a kept backend apply from its next check.
func (s *Scheduler) Update(backends []*backend.Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	old := *s.targets.Load()
	next := make(map[string]*target, len(backends))
	for _, b := range backends {
		addr := b.Address()
		t := old[addr]
		if t == nil {
			t = next[addr]
		}
		if t == nil {
			t = &target{addr: addr}
			healthy := s.initialHealthy
			if h, ok := s.Inherit[addr]; ok && s.active != nil {
				healthy = h
			}
			t.healthy.Store(healthy)
			t.b = s.checkCopy(b)
			if s.active != nil {
				var ctx context.Context
				ctx, t.cancel = context.WithCancel(s.ctx)
				s.wg.Add(1)
				go s.run(ctx, t)
			}
		} else {
			t.b = s.checkCopy(b)
		}
		next[addr] = t
	}
	for addr, t := range old {
		if next[addr] == nil {
			s.forget(t)
		}
	}
	s.targets.Store(&next)
}

// checkCopy returns the backend the checker gets: b with the check port.
func (s *Scheduler) checkCopy(b *backend.Backend) backend.Backend {
	c := *b
	if s.port != "" {
		c.Port = s.port
		c.Freeze() // b's cached address has its own port; checkers dial Address()
	}
	return c
}

// forget stops everything of a removed target. Called with mu held.
func (s *Scheduler) forget(t *target) {
	if t.cancel != nil {
		t.cancel()
	}
	if t.recovery != nil && t.recovery.Stop() {
		s.wg.Done()
	}
	t.recovery = nil
}

// Statuses returns the current status of every backend being tracked.
func (s *Scheduler) Statuses() map[string]bool {
	targets := *s.targets.Load()
	out := make(map[string]bool, len(targets))
	for addr, t := range targets {
		out[addr] = t.healthy.Load()
	}
	return out
}

// Healthy reports the status of addr: for a backend not yet (or no longer)
// known, the initial status; true when there is no checker.
func (s *Scheduler) Healthy(addr string) bool {
	if t := (*s.targets.Load())[addr]; t != nil {
		return t.healthy.Load()
	}
	return s.initialHealthy
}

// DialFailed counts a failed dial to addr for passive health. It is a no-op
// without passive health (nil or MaxFails 0), for unknown backends and for
// backends already down.
func (s *Scheduler) DialFailed(addr string) {
	if s.maxFails == 0 {
		return
	}
	t := (*s.targets.Load())[addr]
	if t == nil || !t.healthy.Load() {
		return
	}
	s.mu.Lock()
	if s.stopped || (*s.targets.Load())[addr] != t || !t.healthy.Load() {
		s.mu.Unlock()
		return
	}
	now := time.Now()
	cut := 0
	for cut < len(t.dials) && now.Sub(t.dials[cut]) >= s.failWindow {
		cut++
	}
	t.dials = append(t.dials[cut:], now)
	if len(t.dials) < s.maxFails {
		t.dialFails.Store(int32(len(t.dials)))
		s.mu.Unlock()
		return
	}
	reason := fmt.Sprintf("passive: %d failed dials within %s", len(t.dials), s.failWindow)
	if len(t.dials) == 1 {
		reason = fmt.Sprintf("passive: failed dial (max_fails 1, fail_duration %s)", s.failWindow)
	}
	s.markLocked(t, false, reason)
	t.epoch++ // checks already running do not count towards recovery
	if s.active == nil {
		epoch := t.epoch
		s.wg.Add(1)
		t.recovery = time.AfterFunc(s.failWindow, func() { s.recoverPassive(t, epoch) })
	}
	s.mu.Unlock()
	s.deliver(t)
}

// recoverPassive brings a passively downed backend back when there is no
// active checker.
func (s *Scheduler) recoverPassive(t *target, epoch uint64) {
	defer s.wg.Done()
	s.mu.Lock()
	if s.stopped || (*s.targets.Load())[t.addr] != t || t.epoch != epoch || t.healthy.Load() {
		s.mu.Unlock()
		return
	}
	t.recovery = nil
	s.markLocked(t, true, fmt.Sprintf("passive: fail_duration %s elapsed", s.failWindow))
	s.mu.Unlock()
	s.deliver(t)
}

// DialSucceeded clears the failed-dial count of addr. It takes no lock unless
// there are failed dials to clear.
func (s *Scheduler) DialSucceeded(addr string) {
	if s.maxFails == 0 {
		return
	}
	t := (*s.targets.Load())[addr]
	if t == nil || t.dialFails.Load() == 0 {
		return
	}
	s.mu.Lock()
	t.dials = t.dials[:0]
	t.dialFails.Store(0)
	s.mu.Unlock()
}

// Stop ends all checks and passive timers and waits for the Scheduler's
// goroutines to exit; no onChange call starts after it returns. A checker that
// ignores its context may still be running its last Check, but its result is
// discarded. Update, DialFailed and DialSucceeded become no-ops.
func (s *Scheduler) Stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		s.cancel()
		for _, t := range *s.targets.Load() {
			s.forget(t)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// markLocked records a transition of t. Called with mu held; the caller must
// call deliver after unlocking.
func (s *Scheduler) markLocked(t *target, healthy bool, reason string) {
	t.healthy.Store(healthy)
	t.failRun, t.passRun = 0, 0
	t.dials = t.dials[:0]
	t.dialFails.Store(0)
	t.pending = append(t.pending, transition{healthy, reason})
}

// deliver calls onChange for t's pending transitions, in order, without
// holding mu. If another goroutine is already delivering for t, it will pick
// them up, so transitions of a backend are never reported out of order.
func (s *Scheduler) deliver(t *target) {
	s.mu.Lock()
	if t.notifyng {
		s.mu.Unlock()
		return
	}
	t.notifyng = true
	for len(t.pending) > 0 && !s.stopped {
		tr := t.pending[0]
		t.pending = t.pending[1:]
		s.mu.Unlock()
		if s.onChange != nil {
			s.onChange(t.addr, tr.healthy, tr.reason)
		}
		s.mu.Lock()
	}
	t.pending = t.pending[:0]
	t.notifyng = false
	s.mu.Unlock()
}

// run checks one backend until ctx ends.
func (s *Scheduler) run(ctx context.Context, t *target) {
	defer s.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	// Spread the second check over a tenth of the interval; later ones keep
	// that phase, each moved by up to ±5% so that they drift apart.
	phase := time.Duration(rand.Int64N(int64(s.interval)/10 + 1))
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		s.mu.Lock()
		b, epoch := t.b, t.epoch
		s.mu.Unlock()
		err := s.check(ctx, &b)
		if ctx.Err() != nil {
			return
		}
		s.record(t, epoch, err)

		wait := s.interval + time.Duration((rand.Float64()-0.5)*0.1*float64(s.interval))
		if n == 0 {
			wait += phase
		}
		timer.Reset(max(wait-time.Since(start), 0))
	}
}

// check runs one check with the timeout, whether or not the checker honours
// its context.
func (s *Scheduler) check(ctx context.Context, b *backend.Backend) error {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	done := make(chan error, 1) // buffered: a late checker must not block forever
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("checker panic: %v", r)
			}
		}()
		done <- s.active.Check(cctx, b)
	}()
	select {
	case err := <-done:
		if err != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("timed out after %s: %w", s.timeout, err)
		}
		return err
	case <-cctx.Done():
		return fmt.Errorf("timed out after %s", s.timeout)
	}
}

// record applies one check result to t.
func (s *Scheduler) record(t *target, epoch uint64, err error) {
	if errors.Is(err, ErrNoVerdict) {
		if s.Log != nil {
			s.Log(t.addr, "health check without verdict, status unchanged: "+err.Error())
		}
		return
	}
	s.mu.Lock()
	if s.stopped || (*s.targets.Load())[t.addr] != t || t.epoch != epoch {
		s.mu.Unlock()
		return
	}
	changed := false
	healthy := t.healthy.Load()
	if err == nil {
		t.failRun = 0
		if !healthy {
			t.passRun++
			if t.passRun >= s.passes {
				reason := "check passed"
				if s.passes > 1 {
					reason = fmt.Sprintf("%d consecutive passes", s.passes)
				}
				s.markLocked(t, true, reason)
				changed = true
			}
		}
	} else {
		t.passRun = 0
		if healthy {
			t.failRun++
			if t.failRun >= s.fails {
				reason := "check failed: " + err.Error()
				if s.fails > 1 {
					reason = fmt.Sprintf("%d consecutive failures: %v", s.fails, err)
				}
				s.markLocked(t, false, reason)
				changed = true
			}
		}
	}
	s.mu.Unlock()
	if changed {
		s.deliver(t)
	}
}
