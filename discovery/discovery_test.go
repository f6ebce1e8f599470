package discovery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
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
	r := &Runner{
		Source:  src,
		Update:  func(l []backend.Backend) { rec.updates <- l },
		OnError: func(err error) { rec.errs <- err },
		OnFetch: func(err error) { rec.fetches <- err },
	}
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
	for _, tt := range []struct{ timeout, want time.Duration }{
		{0, DefaultTimeout},
		{300 * time.Millisecond, 300 * time.Millisecond},
	} {
		c := Common{Timeout: caddy.Duration(tt.timeout)}
		if got := c.FetchTimeout(); got != tt.want {
			t.Errorf("timeout %s: FetchTimeout() = %s, want %s", tt.timeout, got, tt.want)
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
