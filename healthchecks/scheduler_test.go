package healthchecks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
)

// fakeChecker is a Checker whose results come from a function of the backend
// address and the 1-based number of the check for that address.
type fakeChecker struct {
	Common
	fn func(ctx context.Context, b *backend.Backend, n int) error

	mu    sync.Mutex
	calls map[string]int
	lives map[string]int // calls whose context was not done yet
	ports map[string]string
}

func (f *fakeChecker) Check(ctx context.Context, b *backend.Backend) error {
	f.mu.Lock()
	if f.calls == nil {
		f.calls, f.lives, f.ports = map[string]int{}, map[string]int{}, map[string]string{}
	}
	f.calls[b.Host]++
	n := f.calls[b.Host]
	// Looked at under mu: once the Scheduler has cancelled a backend's
	// context, live(host) read afterwards can no longer grow.
	if ctx.Err() == nil {
		f.lives[b.Host]++
	}
	// checkers dial b.Address(): the port must be right there, not only in b.Port
	_, f.ports[b.Host], _ = net.SplitHostPort(b.Address())
	f.mu.Unlock()
	return f.fn(ctx, b, n)
}

func (f *fakeChecker) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[host]
}

// live returns the number of checks of host that started with a context not
// yet cancelled: those whose results could still count.
func (f *fakeChecker) live(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lives[host]
}

func (f *fakeChecker) port(host string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ports[host]
}

// event is one onChange call, with the number of checks of its backend done
// when it was reported.
type event struct {
	addr    string
	healthy bool
	reason  string
	checks  int
}

// recorder collects onChange calls.
type recorder struct {
	ch  chan event
	chk *fakeChecker
}

func newRecorder(chk *fakeChecker) *recorder {
	return &recorder{ch: make(chan event, 1000), chk: chk}
}

func (r *recorder) onChange(addr string, healthy bool, reason string) {
	n := 0
	if r.chk != nil {
		host, _, _ := net.SplitHostPort(addr)
		n = r.chk.count(host)
	}
	r.ch <- event{addr, healthy, reason, n}
}

func (r *recorder) next(t *testing.T, within time.Duration) event {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(within):
		t.Fatalf("no health transition within %s", within)
		return event{}
	}
}

func (r *recorder) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case ev := <-r.ch:
		t.Fatalf("unexpected transition %+v", ev)
	case <-time.After(during):
	}
}

func backends(hosts ...string) []*backend.Backend {
	out := make([]*backend.Backend, len(hosts))
	for i, h := range hosts {
		out[i] = &backend.Backend{Host: h, Port: "80", Weight: 1, Priority: 1}
		out[i].Freeze() // as the handler's backends are
	}
	return out
}

func addr(host string) string { return net.JoinHostPort(host, "80") }

var errDown = errors.New("connection refused")

// script turns a string of check results into a check function:
// '+' healthy, '-' failure, '?' no verdict; the last result repeats.
func script(s string) func(context.Context, *backend.Backend, int) error {
	return func(_ context.Context, _ *backend.Backend, n int) error {
		c := s[min(n, len(s))-1]
		switch c {
		case '+':
			return nil
		case '?':
			return fmt.Errorf("output %q: %w", "garbage", ErrNoVerdict)
		default:
			return errDown
		}
	}
}

func TestSchedulerConsecutive(t *testing.T) {
	type want struct {
		healthy bool
		checks  int    // the check that caused it
		reason  string // substring
	}
	tests := []struct {
		name           string
		fails, passes  int
		initial        string
		results        string
		transitions    []want
		healthyAtStart bool
	}{
		{"defaults flip at once", 0, 0, "", "-+", []want{{false, 1, "check failed: connection refused"}, {true, 2, "check passed"}}, true},
		{"fails 3 passes 2", 3, 2, "", "---++", []want{{false, 3, "3 consecutive failures: connection refused"}, {true, 5, "2 consecutive passes"}}, true},
		{"success resets failures", 3, 1, "", "--+--+---", []want{{false, 9, "3 consecutive failures"}}, true},
		{"failure resets passes", 1, 3, "", "-++-++-+++", []want{{false, 1, ""}, {true, 10, "3 consecutive passes"}}, true},
		{"flapping never changes", 3, 3, "", "-+-+-+-+-+-+-+-+-+-+-+-+", nil, true},
		{"flapping from unhealthy never changes", 3, 3, "unhealthy", "+-+-+-+-+-+-+-+-+-+-+-", nil, false},
		{"initial unhealthy needs passes", 1, 2, "unhealthy", "-++", []want{{true, 3, "2 consecutive passes"}}, false},
		{"initial unhealthy passes 1", 1, 1, "unhealthy", "+", []want{{true, 1, "check passed"}}, false},
		{"initial healthy stays", 1, 1, "healthy", "+", nil, true},
		{"no verdict changes nothing", 2, 1, "", "-?-", []want{{false, 3, "2 consecutive failures"}}, true},
		{"no verdict only", 1, 1, "", "?", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			chk := &fakeChecker{fn: script(tt.results)}
			chk.Interval = caddy.Duration(4 * time.Millisecond)
			chk.Timeout = caddy.Duration(time.Second) // the fake answers at once; do not flake under -race
			chk.Fails, chk.Passes, chk.InitialStatus = tt.fails, tt.passes, tt.initial
			rec := newRecorder(chk)
			s := NewScheduler(chk, nil, rec.onChange)
			var logged atomic.Int32
			s.Log = func(a, msg string) {
				if a != addr("10.0.0.1") || !strings.Contains(msg, "garbage") {
					t.Errorf("Log(%q, %q)", a, msg)
				}
				logged.Add(1)
			}
			defer s.Stop()
			if got := s.Healthy(addr("10.0.0.1")); got != tt.healthyAtStart {
				t.Fatalf("Healthy before Update = %v, want %v", got, tt.healthyAtStart)
			}
			s.Update(backends("10.0.0.1"))
			for _, w := range tt.transitions {
				ev := rec.next(t, 2*time.Second)
				if ev.addr != addr("10.0.0.1") || ev.healthy != w.healthy || ev.checks != w.checks || !strings.Contains(ev.reason, w.reason) {
					t.Fatalf("transition %+v, want healthy=%v at check %d with reason containing %q", ev, w.healthy, w.checks, w.reason)
				}
				if got := s.Healthy(ev.addr); got != w.healthy {
					t.Fatalf("Healthy = %v after transition to %v", got, w.healthy)
				}
			}
			waitFor(t, 2*time.Second, "the script to run out and its last result to repeat", func() bool {
				return chk.count("10.0.0.1") >= len(tt.results)+3
			})
			rec.none(t, 20*time.Millisecond)
			if strings.Contains(tt.results, "?") && logged.Load() == 0 {
				t.Error("no-verdict result was not logged")
			}
		})
	}
}

func TestSchedulerTimeoutIgnoredContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, n int) error {
		<-release // ignores ctx on purpose
		return nil
	}}
	chk.Interval = caddy.Duration(time.Hour)
	chk.Timeout = caddy.Duration(50 * time.Millisecond)
	rec := newRecorder(nil)
	s := NewScheduler(chk, nil, rec.onChange)
	start := time.Now()
	s.Update(backends("10.0.0.2"))
	ev := rec.next(t, 2*time.Second)
	took := time.Since(start)
	if ev.healthy || !strings.Contains(ev.reason, "timed out after 50ms") {
		t.Fatalf("transition %+v, want down with a timeout reason", ev)
	}
	if took < 50*time.Millisecond || took > time.Second {
		t.Fatalf("timeout enforced after %s, want about 50ms", took)
	}
	stopped := make(chan struct{})
	go func() { s.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		t.Fatal("Stop hangs on a checker that ignores its context")
	}
}

func TestSchedulerDefaultTimeout(t *testing.T) {
	for _, tt := range []struct {
		interval, timeout, want time.Duration
	}{
		{2 * time.Second, 0, 2 * time.Second},
		{time.Minute, 0, 5 * time.Second},
		{time.Minute, 300 * time.Millisecond, 300 * time.Millisecond},
	} {
		c := Common{Interval: caddy.Duration(tt.interval), Timeout: caddy.Duration(tt.timeout)}
		if got := c.timeout(); got != tt.want {
			t.Errorf("interval %s timeout %s: effective timeout %s, want %s", tt.interval, tt.timeout, got, tt.want)
		}
	}
}

func TestSchedulerInitialStatusUntilFirstVerdict(t *testing.T) {
	for _, initial := range []string{"healthy", "unhealthy"} {
		t.Run(initial, func(t *testing.T) {
			gate := make(chan struct{})
			chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, n int) error {
				<-gate
				if initial == "healthy" {
					return errDown
				}
				return nil
			}}
			chk.Interval = caddy.Duration(time.Hour)
			chk.InitialStatus = initial
			rec := newRecorder(nil)
			s := NewScheduler(chk, nil, rec.onChange)
			defer s.Stop()
			s.Update(backends("10.0.0.3"))
			want := initial == "healthy"
			waitFor(t, 2*time.Second, "the first check to start", func() bool { return chk.count("10.0.0.3") >= 1 })
			if got := s.Healthy(addr("10.0.0.3")); got != want {
				t.Fatalf("Healthy before the first verdict = %v, want %v", got, want)
			}
			close(gate)
			ev := rec.next(t, 2*time.Second)
			if ev.healthy == want || s.Healthy(addr("10.0.0.3")) == want {
				t.Fatalf("first verdict did not flip the initial status: %+v", ev)
			}
		})
	}
}

func TestSchedulerUpdate(t *testing.T) {
	chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, n int) error {
		if b.Host == "10.0.0.2" {
			return errDown
		}
		return nil
	}}
	chk.Interval = caddy.Duration(5 * time.Millisecond)
	chk.Timeout = caddy.Duration(time.Second)
	chk.Port = 8080
	rec := newRecorder(nil)
	s := NewScheduler(chk, nil, rec.onChange)
	defer s.Stop()

	s.Update(backends("10.0.0.1", "10.0.0.2"))
	ev := rec.next(t, 2*time.Second)
	if ev.addr != addr("10.0.0.2") || ev.healthy {
		t.Fatalf("transition %+v, want 10.0.0.2:80 down (identity keeps the backend's own port)", ev)
	}
	if p := chk.port("10.0.0.2"); p != "8080" {
		t.Fatalf("checker got port %q, want the port setting 8080", p)
	}

	// Removing 10.0.0.2 stops its checks and forgets its state. A check in
	// flight may still finish, but none starts with a live context: checks
	// of the remaining backend go on meanwhile.
	s.Update(backends("10.0.0.1"))
	n := chk.live("10.0.0.2")
	if !s.Healthy(addr("10.0.0.2")) {
		t.Fatal("removed backend kept its unhealthy state")
	}
	checkedAgain(t, chk, "10.0.0.1", 3)
	if m := chk.live("10.0.0.2"); m != n {
		t.Fatalf("removed backend still checked: %d -> %d checks", n, m)
	}
	rec.none(t, 10*time.Millisecond)

	// Adding it back starts afresh: initial status, then a new transition.
	s.Update(backends("10.0.0.1", "10.0.0.2", "10.0.0.3"))
	ev = rec.next(t, 2*time.Second)
	if ev.addr != addr("10.0.0.2") || ev.healthy {
		t.Fatalf("transition %+v, want 10.0.0.2:80 down again", ev)
	}
	checkedAgain(t, chk, "10.0.0.3", 2)
	rec.none(t, 20*time.Millisecond)

	// An empty list stops everything: a backend added afterwards is checked,
	// the removed ones are not.
	s.Update(nil)
	n1, n2, n3 := chk.live("10.0.0.1"), chk.live("10.0.0.2"), chk.live("10.0.0.3")
	s.Update(backends("10.0.0.4"))
	checkedAgain(t, chk, "10.0.0.4", 3)
	if chk.live("10.0.0.1") != n1 || chk.live("10.0.0.2") != n2 || chk.live("10.0.0.3") != n3 {
		t.Fatal("backends still checked after Update(nil)")
	}
}

// checkedAgain waits until host has been checked n more times.
func checkedAgain(t *testing.T, chk *fakeChecker, host string, n int) {
	t.Helper()
	want := chk.count(host) + n
	waitFor(t, 2*time.Second, fmt.Sprintf("%d more checks of %s", n, host), func() bool { return chk.count(host) >= want })
}

// TestSchedulerJitter: the second checks of many backends spread out. The
// interval is long enough that a stall of the test process (timers firing
// together) cannot squeeze the expected spread of about interval/5 below
// the interval/20 the test asks for.
func TestSchedulerJitter(t *testing.T) {
	const n = 200
	interval := time.Second
	var mu sync.Mutex
	second := make([]time.Time, 0, n)
	chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, k int) error {
		if k == 2 {
			mu.Lock()
			second = append(second, time.Now())
			mu.Unlock()
		}
		return nil
	}}
	chk.Interval = caddy.Duration(interval)
	s := NewScheduler(chk, nil, nil)
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = "10.1.0." + strconv.Itoa(i)
	}
	start := time.Now()
	s.Update(backends(hosts...))
	waitFor(t, 10*interval, fmt.Sprintf("the second check of all %d backends", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(second) == n
	})
	s.Stop()
	mu.Lock()
	defer mu.Unlock()
	lo, hi := second[0], second[0]
	for _, at := range second {
		if d := at.Sub(start); d < interval*95/100 {
			t.Fatalf("second check after %s, want at least 95%% of the interval", d)
		}
		if at.Before(lo) {
			lo = at
		}
		if at.After(hi) {
			hi = at
		}
	}
	if spread := hi.Sub(lo); spread < interval/20 {
		t.Fatalf("second checks of %d backends spread over %s only", n, spread)
	}
}

func TestSchedulerPassive(t *testing.T) {
	t.Run("max_fails within fail_duration, recovery after fail_duration", func(t *testing.T) {
		rec := newRecorder(nil)
		s := NewScheduler(nil, &Passive{MaxFails: 3, FailDuration: caddy.Duration(150 * time.Millisecond)}, rec.onChange)
		defer s.Stop()
		a := addr("10.0.0.1")
		s.Update(backends("10.0.0.1", "10.0.0.9"))
		s.DialFailed(a)
		s.DialFailed(a)
		s.DialSucceeded(a) // clears the count
		s.DialFailed(a)
		s.DialFailed(a)
		s.DialFailed("10.9.9.9:80") // unknown: ignored
		rec.none(t, 10*time.Millisecond)
		if !s.Healthy(a) {
			t.Fatal("down before max_fails")
		}
		start := time.Now()
		s.DialFailed(a)
		ev := rec.next(t, time.Second)
		if ev.addr != a || ev.healthy || !strings.Contains(ev.reason, "passive: 3 failed dials within 150ms") {
			t.Fatalf("transition %+v, want passive down", ev)
		}
		if s.Healthy(a) || !s.Healthy(addr("10.0.0.9")) {
			t.Fatal("Healthy does not reflect the passive mark-down")
		}
		s.DialFailed(a) // already down: ignored
		ev = rec.next(t, time.Second)
		if took := time.Since(start); ev.addr != a || !ev.healthy || took < 150*time.Millisecond || !strings.Contains(ev.reason, "fail_duration 150ms elapsed") {
			t.Fatalf("transition %+v after %s, want up after fail_duration", ev, took)
		}
		rec.none(t, 20*time.Millisecond)
	})
	t.Run("failures older than fail_duration do not count", func(t *testing.T) {
		rec := newRecorder(nil)
		s := NewScheduler(nil, &Passive{MaxFails: 2, FailDuration: caddy.Duration(40 * time.Millisecond)}, rec.onChange)
		defer s.Stop()
		a := addr("10.0.0.1")
		s.Update(backends("10.0.0.1"))
		s.DialFailed(a)
		time.Sleep(60 * time.Millisecond) // the scenario: the first failure ages out of the window
		s.DialFailed(a)
		rec.none(t, 10*time.Millisecond)
		s.DialFailed(a)
		if ev := rec.next(t, time.Second); ev.healthy {
			t.Fatalf("transition %+v, want down", ev)
		}
	})
	t.Run("recovery through the active check respects passes", func(t *testing.T) {
		chk := &fakeChecker{fn: script("+")}
		chk.Interval = caddy.Duration(20 * time.Millisecond)
		chk.Timeout = caddy.Duration(time.Second)
		chk.Passes = 3
		rec := newRecorder(chk)
		s := NewScheduler(chk, &Passive{MaxFails: 1, FailDuration: caddy.Duration(time.Hour)}, rec.onChange)
		defer s.Stop()
		a := addr("10.0.0.1")
		s.Update(backends("10.0.0.1"))
		waitFor(t, 2*time.Second, "the first check", func() bool { return chk.count("10.0.0.1") >= 1 })
		s.DialFailed(a)
		ev := rec.next(t, time.Second)
		if ev.healthy || !strings.Contains(ev.reason, "passive") {
			t.Fatalf("transition %+v, want passive down", ev)
		}
		before := ev.checks
		ev = rec.next(t, 2*time.Second)
		if !ev.healthy || !strings.Contains(ev.reason, "3 consecutive passes") || ev.checks-before < 3 {
			t.Fatalf("transition %+v (down at check %d), want up after 3 more passes", ev, before)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		for _, p := range []*Passive{nil, {MaxFails: 0}} {
			rec := newRecorder(nil)
			s := NewScheduler(nil, p, rec.onChange)
			s.Update(backends("10.0.0.1"))
			for range 10 {
				s.DialFailed(addr("10.0.0.1"))
			}
			s.DialSucceeded(addr("10.0.0.1"))
			rec.none(t, 10*time.Millisecond)
			if !s.Healthy(addr("10.0.0.1")) {
				t.Fatal("no checker: not healthy")
			}
			s.Stop()
		}
	})
	t.Run("removal cancels the recovery timer", func(t *testing.T) {
		rec := newRecorder(nil)
		s := NewScheduler(nil, &Passive{MaxFails: 1, FailDuration: caddy.Duration(30 * time.Millisecond)}, rec.onChange)
		s.Update(backends("10.0.0.1"))
		s.DialFailed(addr("10.0.0.1"))
		rec.next(t, time.Second)
		s.Update(nil)
		rec.none(t, 60*time.Millisecond)
		s.Stop()
	})
}

// TestSchedulerConcurrent hammers every method at once (run with -race) and
// checks that the transitions of each backend alternate, i.e. are delivered
// exactly once and in order.
func TestSchedulerConcurrent(t *testing.T) {
	chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, n int) error {
		if rand.IntN(3) == 0 {
			return errDown
		}
		return nil
	}}
	chk.Interval = caddy.Duration(time.Millisecond)
	chk.Timeout = caddy.Duration(time.Second)
	chk.Fails, chk.Passes = 1, 1
	var mu sync.Mutex
	last := map[string]bool{}
	var transitions atomic.Int64
	var stopped atomic.Bool
	late := make(chan string, 1)
	var s *Scheduler
	s = NewScheduler(chk, &Passive{MaxFails: 2, FailDuration: caddy.Duration(time.Second)}, func(a string, healthy bool, reason string) {
		if stopped.Load() {
			select {
			case late <- a:
			default:
			}
		}
		_ = s.Healthy(a) // allowed: no locks are held
		mu.Lock()
		defer mu.Unlock()
		prev, seen := last[a]
		if !seen {
			prev = true
		}
		if prev == healthy {
			t.Errorf("%s: transition to %v twice in a row (%s)", a, healthy, reason)
		}
		last[a] = healthy
		transitions.Add(1)
	})
	hosts := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
	s.Update(backends(hosts...))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				a := addr(hosts[rand.IntN(len(hosts))])
				switch rand.IntN(4) {
				case 0:
					s.DialSucceeded(a)
				case 1:
					_ = s.Healthy(a)
				default:
					s.DialFailed(a)
				}
				if i == 0 && rand.IntN(50) == 0 {
					s.Update(backends(hosts...)) // same set: keeps state
				}
				runtime.Gosched()
			}
		})
	}
	const want = 300
	waitFor(t, 10*time.Second, fmt.Sprintf("%d transitions", want), func() bool { return transitions.Load() >= want })
	close(stop)
	wg.Wait()
	s.Stop()
	stopped.Store(true)
	// There is no condition to wait for: any call from now on is a bug, so
	// watch for one a while.
	select {
	case a := <-late:
		t.Fatalf("onChange(%s) called after Stop returned", a)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestSchedulerStopEndsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	chk := &fakeChecker{fn: func(ctx context.Context, b *backend.Backend, n int) error {
		<-ctx.Done() // a well-behaved, slow checker
		return ctx.Err()
	}}
	chk.Interval = caddy.Duration(time.Millisecond)
	chk.Timeout = caddy.Duration(time.Hour)
	s := NewScheduler(chk, &Passive{MaxFails: 1}, nil)
	hosts := make([]string, 50)
	for i := range hosts {
		hosts[i] = "10.2.0." + strconv.Itoa(i)
	}
	s.Update(backends(hosts...))
	s.DialFailed(addr(hosts[0]))
	waitFor(t, 2*time.Second, "a check in flight for every backend", func() bool {
		for _, h := range hosts {
			if chk.count(h) == 0 {
				return false
			}
		}
		return true
	})
	s.Stop()
	s.Update(backends(hosts...)) // no-op after Stop
	waitFor(t, 2*time.Second, fmt.Sprintf("the goroutine count to fall back to %d", before), func() bool {
		return runtime.NumGoroutine() <= before
	})
}

func TestSchedulerNoChecker(t *testing.T) {
	s := NewScheduler(nil, nil, nil)
	s.Update(backends("10.0.0.1"))
	if !s.Healthy(addr("10.0.0.1")) || !s.Healthy("unknown:1") {
		t.Fatal("without a checker every backend is healthy")
	}
	s.Stop()
	s.Stop() // idempotent
}

func TestSchedulerCheckerPanic(t *testing.T) {
	chk := &fakeChecker{fn: func(context.Context, *backend.Backend, int) error { panic("boom") }}
	chk.Interval = caddy.Duration(time.Hour)
	rec := newRecorder(nil)
	s := NewScheduler(chk, nil, rec.onChange)
	defer s.Stop()
	s.Update(backends("10.0.0.1"))
	if ev := rec.next(t, time.Second); ev.healthy || !strings.Contains(ev.reason, "panic: boom") {
		t.Fatalf("transition %+v, want down with the panic", ev)
	}
}

// hotPath returns a scheduler with passive health and three backends, and
// the address of one: the proxy calls Healthy on pool rebuilds and
// DialSucceeded on every connection, and neither may lock or allocate.
func hotPath(tb testing.TB) (*Scheduler, string) {
	s := NewScheduler(nil, &Passive{MaxFails: 3}, nil)
	tb.Cleanup(s.Stop)
	s.Update(backends("10.0.0.1", "10.0.0.2", "10.0.0.3"))
	return s, addr("10.0.0.2")
}

func TestSchedulerHotPathZeroAlloc(t *testing.T) {
	s, a := hotPath(t)
	if n := testing.AllocsPerRun(200, func() {
		if !s.Healthy(a) {
			t.Fatal("unhealthy")
		}
		s.DialSucceeded(a)
	}); n != 0 {
		t.Errorf("%v allocations per Healthy+DialSucceeded", n)
	}
}

func BenchmarkHealthy(b *testing.B) {
	s, a := hotPath(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !s.Healthy(a) {
				b.Fatal("unhealthy")
			}
		}
	})
}

func BenchmarkDialSucceeded(b *testing.B) {
	s, a := hotPath(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.DialSucceeded(a)
		}
	})
}
