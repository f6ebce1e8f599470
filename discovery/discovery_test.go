package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/testutil"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// fakeSource answers Fetch with fn(ctx, n) for the n-th call (from 1).
type fakeSource struct {
	Common
	mu    sync.Mutex
	calls int
	fn    func(ctx context.Context, n int) ([]backend.Backend, error)
}

func (f *fakeSource) Fetch(ctx context.Context) ([]backend.Backend, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	return f.fn(ctx, n)
}

func (f *fakeSource) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// fakeWatcher is a fakeSource that also pushes lists through Watch.
type fakeWatcher struct {
	fakeSource
	watch func(ctx context.Context, n int, update func([]backend.Backend)) error
	wmu   sync.Mutex
	wn    int
}

func (w *fakeWatcher) Watch(ctx context.Context, update func([]backend.Backend)) error {
	w.wmu.Lock()
	w.wn++
	n := w.wn
	w.wmu.Unlock()
	return w.watch(ctx, n, update)
}

func list(ports ...int) []backend.Backend {
	out := make([]backend.Backend, len(ports))
	for i, p := range ports {
		out[i] = backend.Backend{Host: "127.0.0.1", Port: strconv.Itoa(p), Weight: 1, Priority: 1}
	}
	return out
}

// record collects what a Runner reports.
type record struct {
	updates chan []backend.Backend
	fetches chan error
	errs    chan error
}

func newRecord() *record {
	return &record{
		updates: make(chan []backend.Backend, 100),
		fetches: make(chan error, 100),
		errs:    make(chan error, 100),
	}
}

// run starts a Runner for src; the returned channel closes when Run returns.
func (rec *record) run(t *testing.T, ctx context.Context, src Configured) <-chan struct{} {
	t.Helper()
	return rec.start(ctx, rec.runner(src))
}

// runner is a Runner for src that reports to rec.
func (rec *record) runner(src Configured) *Runner {
	return &Runner{
		Source:  src,
		Update:  func(l []backend.Backend) { rec.updates <- l },
		OnError: func(err error) { rec.errs <- err },
		OnFetch: func(err error) { rec.fetches <- err },
	}
}

// start runs r; the returned channel closes when Run returns.
func (rec *record) start(ctx context.Context, r *Runner) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	return done
}

func recv[T any](t *testing.T, ch <-chan T, within time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("no %s within %v", what, within)
		panic("unreachable")
	}
}

func nothing[T any](t *testing.T, ch <-chan T, during time.Duration, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %v", what, v)
	case <-time.After(during):
	}
}

func ports(l []backend.Backend) string {
	var s []string
	for _, b := range l {
		s = append(s, b.Port)
	}
	return strings.Join(s, ",")
}

func TestRunnerFetchesAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &fakeSource{Common: Common{Interval: caddy.Duration(time.Hour)},
		fn: func(context.Context, int) ([]backend.Backend, error) { return list(1, 2), nil }}
	rec := newRecord()
	done := rec.run(t, ctx, src)
	start := time.Now()
	got := recv(t, rec.updates, time.Second, "update")
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("first update after %v, want at once", took)
	}
	if ports(got) != "1,2" {
		t.Fatalf("update = %v, want ports 1,2", got)
	}
	if err := recv(t, rec.fetches, time.Second, "OnFetch"); err != nil {
		t.Fatalf("OnFetch(%v), want nil for a successful fetch", err)
	}
	nothing(t, rec.updates, 150*time.Millisecond, "second update before the 1h interval")
	cancel()
	recv(t, done, time.Second, "Run return")
}

func TestRunnerInterval(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &fakeSource{Common: Common{Interval: caddy.Duration(50 * time.Millisecond)},
		fn: func(_ context.Context, n int) ([]backend.Backend, error) { return list(n), nil }}
	rec := newRecord()
	done := rec.run(t, ctx, src)
	start := time.Now()
	for want := 1; want <= 4; want++ {
		got := recv(t, rec.updates, time.Second, "update")
		if ports(got) != strconv.Itoa(want) {
			t.Fatalf("update %d = %s, want the list of fetch %d", want, ports(got), want)
		}
	}
	if took := time.Since(start); took < 140*time.Millisecond {
		t.Errorf("4 fetches at 50ms interval took %v, want at least 150ms", took)
	}
	cancel()
	recv(t, done, time.Second, "Run return")
}

func TestRunnerFailPolicy(t *testing.T) {
	boom := errors.New("source down")
	// fetch 1 ok, 2 and 3 fail, 4 ok
	fn := func(_ context.Context, n int) ([]backend.Backend, error) {
		if n == 2 || n == 3 {
			return nil, boom
		}
		return list(n), nil
	}
	for _, tt := range []struct {
		policy string
		want   []string // the updates in order; "nil" = Update(nil)
	}{
		{"", []string{"1", "4", "5"}},
		{"keeplast", []string{"1", "4", "5"}},
		{"setempty", []string{"1", "nil", "nil", "4", "5"}},
	} {
		t.Run("policy "+tt.policy, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src := &fakeSource{Common: Common{Interval: caddy.Duration(30 * time.Millisecond), FailPolicy: tt.policy}, fn: fn}
			rec := newRecord()
			done := rec.run(t, ctx, src)
			for i, want := range tt.want {
				got := recv(t, rec.updates, time.Second, "update")
				s := ports(got)
				if got == nil {
					s = "nil"
				}
				if s != want {
					t.Fatalf("update %d = %q, want %q (all: %v)", i, s, want, tt.want)
				}
			}
			cancel()
			recv(t, done, time.Second, "Run return")
			close(rec.fetches)
			close(rec.errs)
			var fails, oks int
			for err := range rec.fetches {
				if err != nil {
					if !errors.Is(err, boom) {
						t.Errorf("OnFetch(%v), want the source's error", err)
					}
					fails++
				} else {
					oks++
				}
			}
			if fails != 2 || oks < 3 {
				t.Errorf("OnFetch saw %d failures and %d successes, want 2 and at least 3", fails, oks)
			}
			if n := len(rec.errs); n != 2 {
				t.Errorf("OnError called %d times, want 2", n)
			}
		})
	}
}

func TestRunnerTimeout(t *testing.T) {
	blocking := func(ctx context.Context, _ int) ([]backend.Backend, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	lateButOK := func(ctx context.Context, _ int) ([]backend.Backend, error) {
		<-ctx.Done()
		return list(1), nil // ignores the deadline
	}
	for _, tt := range []struct {
		name    string
		timeout time.Duration // Common.Timeout
		fn      func(context.Context, int) ([]backend.Backend, error)
		want    time.Duration
	}{
		{"timeout setting", 100 * time.Millisecond, blocking, 100 * time.Millisecond},
		{"list after deadline is an error", 100 * time.Millisecond, lateButOK, 100 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src := &fakeSource{Common: Common{Interval: caddy.Duration(time.Hour), Timeout: caddy.Duration(tt.timeout)}, fn: tt.fn}
			rec := newRecord()
			start := time.Now()
			done := rec.run(t, ctx, src)
			err := recv(t, rec.fetches, tt.want+time.Second, "OnFetch")
			took := time.Since(start)
			if err == nil {
				t.Fatal("OnFetch(nil) for a fetch that timed out")
			}
			if took < tt.want || took > tt.want+500*time.Millisecond {
				t.Errorf("timeout reported after %v, want about %v", took, tt.want)
			}
			nothing(t, rec.updates, 50*time.Millisecond, "update after a timed-out fetch (keeplast)")
			cancel()
			recv(t, done, time.Second, "Run return")
		})
	}
}

func TestFetchTimeout(t *testing.T) {
	for _, tt := range []struct{ timeout, kind, want time.Duration }{
		{0, 0, DefaultTimeout},
		{300 * time.Millisecond, 0, 300 * time.Millisecond},
		{0, 3 * time.Second, 3 * time.Second},
		{300 * time.Millisecond, 3 * time.Second, 300 * time.Millisecond},
	} {
		c := Common{Timeout: caddy.Duration(tt.timeout), kindTimeout: tt.kind}
		if got := c.FetchTimeout(); got != tt.want {
			t.Errorf("timeout %s, kind default %s: FetchTimeout() = %s, want %s", tt.timeout, tt.kind, got, tt.want)
		}
	}
}

func TestRunnerIntervalZero(t *testing.T) {
	t.Run("fetches once", func(t *testing.T) {
		src := &fakeSource{fn: func(context.Context, int) ([]backend.Backend, error) { return list(7), nil }}
		rec := newRecord()
		done := rec.run(t, context.Background(), src)
		if got := recv(t, rec.updates, time.Second, "update"); ports(got) != "7" {
			t.Fatalf("update = %v", got)
		}
		recv(t, done, time.Second, "Run return after the one successful fetch")
		if n := src.Calls(); n != 1 {
			t.Fatalf("Fetch called %d times, want 1", n)
		}
	})
	t.Run("retries until success", func(t *testing.T) {
		src := &fakeSource{fn: func(_ context.Context, n int) ([]backend.Backend, error) {
			if n == 1 {
				return nil, errors.New("not yet")
			}
			return list(8), nil
		}}
		rec := newRecord()
		start := time.Now()
		done := rec.run(t, context.Background(), src)
		if err := recv(t, rec.fetches, time.Second, "OnFetch"); err == nil {
			t.Fatal("first OnFetch(nil), want the error")
		}
		if got := recv(t, rec.updates, 3*time.Second, "update after the retry"); ports(got) != "8" {
			t.Fatalf("update = %v", got)
		}
		if took := time.Since(start); took < 900*time.Millisecond {
			t.Errorf("retry after %v, want the 1 s retry delay", took)
		}
		recv(t, done, time.Second, "Run return after success")
		if n := src.Calls(); n != 2 {
			t.Fatalf("Fetch called %d times, want 2", n)
		}
	})
}

func TestRunnerCancel(t *testing.T) {
	t.Run("while sleeping", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		src := &fakeSource{Common: Common{Interval: caddy.Duration(time.Hour)},
			fn: func(context.Context, int) ([]backend.Backend, error) { return list(1), nil }}
		rec := newRecord()
		done := rec.run(t, ctx, src)
		recv(t, rec.updates, time.Second, "update")
		cancel()
		recv(t, done, 200*time.Millisecond, "Run return after cancel")
	})
	t.Run("during a fetch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		src := &fakeSource{Common: Common{FailPolicy: "setempty"},
			fn: func(ctx context.Context, int int) ([]backend.Backend, error) {
				close(started)
				<-ctx.Done()
				return nil, ctx.Err()
			}}
		rec := newRecord()
		done := rec.run(t, ctx, src)
		recv(t, started, time.Second, "fetch start")
		cancel()
		recv(t, done, 200*time.Millisecond, "Run return after cancel")
		// A cancelled fetch is not a failure: no OnFetch, no Update(nil).
		nothing(t, rec.fetches, 0, "OnFetch after cancel")
		nothing(t, rec.updates, 0, "Update after cancel")
	})
	t.Run("retrying with interval 0", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		src := &fakeSource{fn: func(context.Context, int) ([]backend.Backend, error) { return nil, errors.New("down") }}
		rec := newRecord()
		done := rec.run(t, ctx, src)
		recv(t, rec.fetches, time.Second, "OnFetch")
		cancel()
		recv(t, done, 200*time.Millisecond, "Run return after cancel")
	})
}

func TestRunnerWatcher(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &fakeWatcher{
		fakeSource: fakeSource{Common: Common{Interval: caddy.Duration(50 * time.Millisecond)},
			fn: func(_ context.Context, n int) ([]backend.Backend, error) { return list(100 + n), nil }},
	}
	w.watch = func(ctx context.Context, n int, update func([]backend.Backend)) error {
		if n == 1 {
			update(list(201))
			update(list(202, 203))
			return errors.New("watch broke")
		}
		update(list(300 + n))
		<-ctx.Done()
		return ctx.Err()
	}
	rec := newRecord()
	done := rec.run(t, ctx, w)
	// fetch, two watched lists, (watch error) refetch after the interval, watch again
	want := []string{"101", "201", "202,203", "102", "302"}
	for i, wnt := range want {
		got := recv(t, rec.updates, time.Second, fmt.Sprintf("update %d", i))
		if ports(got) != wnt {
			t.Fatalf("update %d = %s, want %s", i, ports(got), wnt)
		}
	}
	err := recv(t, rec.errs, time.Second, "OnError for the broken watch")
	if err == nil || !strings.Contains(err.Error(), "watch broke") || !strings.Contains(err.Error(), "watch") {
		t.Fatalf("OnError(%v), want the watch error", err)
	}
	nothing(t, rec.updates, 150*time.Millisecond, "update while the watch is quiet (no polling)")
	cancel()
	recv(t, done, time.Second, "Run return")
}

func TestValidateCommon(t *testing.T) {
	for _, tt := range []struct {
		c       Common
		mention string // "" = valid
	}{
		{Common{}, ""},
		{Common{FailPolicy: "keeplast", Interval: caddy.Duration(time.Second), Timeout: caddy.Duration(time.Second)}, ""},
		{Common{FailPolicy: "setempty"}, ""},
		{Common{FailPolicy: "keep"}, "failpolicy"},
		{Common{Interval: -1}, "interval"},
		{Common{Timeout: -1}, "timeout"},
	} {
		err := tt.c.ValidateCommon()
		switch {
		case tt.mention == "" && err != nil:
			t.Errorf("%+v: %v", tt.c, err)
		case tt.mention != "" && (err == nil || !strings.Contains(err.Error(), tt.mention)):
			t.Errorf("%+v: error %v, want one naming %s", tt.c, err, tt.mention)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	var r Runner
	for _, tt := range []struct {
		n     int
		limit time.Duration
		want  time.Duration
	}{
		{1, time.Minute, time.Second},
		{2, time.Minute, 2 * time.Second},
		{6, time.Minute, 32 * time.Second},
		{7, time.Minute, time.Minute},
		{1000, time.Minute, time.Minute},
		{1, 50 * time.Millisecond, 50 * time.Millisecond},
		{3, RetryMax, 4 * time.Second},
		{1000, RetryMax, RetryMax},
	} {
		if got := r.retryDelay(tt.n, tt.limit); got != tt.want {
			t.Errorf("retryDelay(%d, %s) = %s, want %s", tt.n, tt.limit, got, tt.want)
		}
	}
}

// fetchGaps runs src with a short backoff and returns the gaps between the
// first n+1 fetches, each with its error.
func fetchGaps(t *testing.T, src Configured, first, max time.Duration, n int) ([]time.Duration, []error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := newRecord()
	r := rec.runner(src)
	r.retryFirst, r.retryMax = first, max
	done := rec.start(ctx, r)
	defer func() { cancel(); <-done }()
	var gaps []time.Duration
	var errs []error
	last := time.Now()
	for i := 0; i <= n; i++ {
		err := recv(t, rec.fetches, 5*time.Second, fmt.Sprintf("fetch %d", i+1))
		now := time.Now()
		if i > 0 {
			gaps = append(gaps, now.Sub(last))
		}
		errs = append(errs, err)
		last = now
	}
	return gaps, errs
}

// checkGaps compares measured gaps with the wanted ones: never early, and
// late by at most slack (scheduling on a loaded machine).
func checkGaps(t *testing.T, got, want []time.Duration) {
	t.Helper()
	const early, slack = 5 * time.Millisecond, 200 * time.Millisecond
	for i := range want {
		if got[i] < want[i]-early || got[i] > want[i]+slack {
			t.Errorf("gap %d = %v, want %v (all gaps %v, want %v)", i+1, got[i].Round(time.Millisecond), want[i], got, want)
		}
	}
}

func TestRunnerBackoff(t *testing.T) {
	const first = 60 * time.Millisecond
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	t.Run("interval 0 doubles up to the maximum", func(t *testing.T) {
		src := &fakeSource{fn: func(context.Context, int) ([]backend.Backend, error) { return nil, errors.New("down") }}
		gaps, _ := fetchGaps(t, src, first, ms(250), 6)
		checkGaps(t, gaps, []time.Duration{ms(60), ms(120), ms(240), ms(250), ms(250), ms(250)})
	})
	t.Run("interval caps the delay and success resets it", func(t *testing.T) {
		// fetch 1 ok, 2-6 fail, 7 ok, 8 fails, 9 ok
		src := &fakeSource{Common: Common{Interval: caddy.Duration(ms(400))},
			fn: func(_ context.Context, n int) ([]backend.Backend, error) {
				if n >= 2 && n <= 6 || n == 8 {
					return nil, errors.New("down")
				}
				return list(n), nil
			}}
		gaps, errs := fetchGaps(t, src, first, ms(250), 8)
		for i, err := range errs {
			if wantErr := i+1 >= 2 && i+1 <= 6 || i+1 == 8; (err != nil) != wantErr {
				t.Fatalf("fetch %d: error %v, want error %v", i+1, err, wantErr)
			}
		}
		// ok→interval, fail→60, 120, 240, 400 (capped by the interval, not by
		// the 250ms maximum that only applies to interval 0), 400, ok→interval, fail→60
		checkGaps(t, gaps, []time.Duration{ms(400), ms(60), ms(120), ms(240), ms(400), ms(400), ms(400), ms(60)})
	})
	t.Run("interval 0 stops after the first success", func(t *testing.T) {
		src := &fakeSource{fn: func(_ context.Context, n int) ([]backend.Backend, error) {
			if n < 4 {
				return nil, errors.New("down")
			}
			return list(n), nil
		}}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := newRecord()
		r := rec.runner(src)
		r.retryFirst = first
		start := time.Now()
		done := rec.start(ctx, r)
		if got := recv(t, rec.updates, 5*time.Second, "update"); ports(got) != "4" {
			t.Fatalf("update = %v", got)
		}
		// 60 + 120 + 240 ms of waiting
		if took := time.Since(start); took < ms(420)-5*time.Millisecond {
			t.Errorf("success after %v, want at least 420ms of backoff", took)
		}
		recv(t, done, time.Second, "Run return after success")
		if c := r.Counts(); c != (Counts{FetchesOK: 1, FetchesFailed: 3}) {
			t.Errorf("Counts() = %+v, want 1 ok and 3 failed", c)
		}
	})
	t.Run("broken watches back off, a delivering watch resets", func(t *testing.T) {
		var mu sync.Mutex
		var starts []time.Time
		w := &fakeWatcher{fakeSource: fakeSource{
			fn: func(_ context.Context, n int) ([]backend.Backend, error) { return list(n), nil }}}
		// watches 1-3 fail at once, 4 delivers then fails, 5 and 6 fail at once
		w.watch = func(ctx context.Context, n int, update func([]backend.Backend)) error {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			if n == 4 {
				update(list(400))
			}
			if n == 7 {
				<-ctx.Done()
				return ctx.Err()
			}
			return errors.New("watch broke")
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		rec := newRecord()
		r := rec.runner(w)
		r.retryFirst, r.retryMax = first, ms(1000)
		done := rec.start(ctx, r)
		var n int
		for deadline := time.Now().Add(5 * time.Second); n < 7 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			mu.Lock()
			n = len(starts)
			mu.Unlock()
		}
		cancel()
		<-done
		if n < 7 {
			t.Fatalf("%d watches in 5s, want 7", n)
		}
		var gaps []time.Duration
		for i := 1; i < 7; i++ {
			gaps = append(gaps, starts[i].Sub(starts[i-1]))
		}
		checkGaps(t, gaps, []time.Duration{ms(60), ms(120), ms(240), ms(60), ms(120), ms(240)})
		if c := r.Counts(); c.WatchErrors != 6 || c.FetchesFailed != 0 || c.FetchesOK != 7 {
			t.Errorf("Counts() = %+v, want 6 watch errors, 7 good fetches", c)
		}
	})
}

func TestRunnerCounts(t *testing.T) {
	// fetch 1 ok, 2 fails, 3 times out, 4 ok, then ok
	src := &fakeSource{Common: Common{Interval: caddy.Duration(20 * time.Millisecond), Timeout: caddy.Duration(50 * time.Millisecond)},
		fn: func(ctx context.Context, n int) ([]backend.Backend, error) {
			switch n {
			case 2:
				return nil, errors.New("down")
			case 3:
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return list(n), nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := newRecord()
	r := rec.runner(src)
	r.retryFirst = 10 * time.Millisecond
	done := rec.start(ctx, r)
	// Counts is read while the Runner runs (the race detector checks it).
	var last Counts
	waitUntil := time.Now().Add(5 * time.Second)
	for time.Now().Before(waitUntil) {
		last = r.Counts()
		if last.FetchesOK >= 3 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	c := r.Counts()
	if c.FetchesFailed != 2 || c.FetchesOK < 3 || c.WatchErrors != 0 {
		t.Fatalf("Counts() = %+v, want 2 failed, at least 3 ok", c)
	}
	if c.FetchesOK < last.FetchesOK || c.FetchesFailed < last.FetchesFailed {
		t.Fatalf("counts went down: %+v then %+v", last, c)
	}
	close(rec.fetches)
	var oks, fails uint64
	for err := range rec.fetches {
		if err != nil {
			fails++
		} else {
			oks++
		}
	}
	if oks != c.FetchesOK || fails != c.FetchesFailed {
		t.Errorf("OnFetch saw %d ok, %d failed; Counts() = %+v", oks, fails, c)
	}
}

// loadKind builds a discovery module from JSON as Caddy does: strict
// decoding, Provision, Validate; mustLoadKind fails the test on error.
var (
	loadKind     = testutil.Loader[Configured]("between.discovery.").Load
	mustLoadKind = testutil.Loader[Configured]("between.discovery.").MustLoad
)

// wantErrParts fails the test unless err is an error that contains every part.
func wantErrParts(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

// goldenCaddyfile checks Caddyfile -> JSON for the golden files in dir:
// NAME.caddyfile gives NAME.json.
func goldenCaddyfile(t *testing.T, dir string, newMod func() caddyfile.Unmarshaler) {
	t.Helper()
	inputs, err := filepath.Glob(filepath.Join(dir, "*.caddyfile"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden files in %s: %v", dir, err)
	}
	for _, in := range inputs {
		t.Run(strings.TrimSuffix(filepath.Base(in), ".caddyfile"), func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			mod := newMod()
			if err := mod.UnmarshalCaddyfile(caddyfile.NewTestDispenser(string(src))); err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(mod, "", "\t")
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(in, ".caddyfile") + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
				t.Fatalf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// caddyfileErrors checks that each input is refused with an error that
// contains mention.
func caddyfileErrors(t *testing.T, newMod func() caddyfile.Unmarshaler, cases []struct{ name, input, mention string }) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			err := newMod().UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			wantErrParts(t, err, tt.mention)
		})
	}
}

// caddyContext is a Caddy context for provisioning modules in tests.
func caddyContext() caddy.Context {
	ctx, _ := caddy.NewContext(caddy.Context{Context: context.Background()})
	return ctx
}
