package sharedstorage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

// engine is one storage engine under test: it makes provisioned storages
// that share one data set (same prefix) and describes its limits.
type engine struct {
	name string
	// open returns a provisioned storage with the module JSON given
	// (extra fields merged into the engine's base settings).
	open func(t *testing.T, prefix string, lockTTL time.Duration) certmagic.Storage
	// config is the module JSON for the helper process.
	config func(prefix string, lockTTL time.Duration) map[string]any
	limit  int           // the largest value Store accepts
	ttl    time.Duration // lock_ttl used by the expiry test
	// expiry is the longest a dead holder's lock may take to free itself
	// after the holder's last renewal
	expiry time.Duration
}

// provision decodes module JSON into m and provisions it in a fresh Caddy
// context, cleaned up with the test.
func provision(t *testing.T, m caddy.Module, cfg map[string]any) {
	t.Helper()
	b, _ := json.Marshal(cfg)
	if err := json.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := m.(caddy.Provisioner).Provision(ctx); err != nil {
		t.Fatalf("provision %s: %v", b, err)
	}
	t.Cleanup(func() {
		m.(caddy.CleanerUpper).Cleanup()
		cancel()
	})
}

var prefixSeq atomic.Int64

// uniquePrefix is a prefix no other test uses.
func uniquePrefix(name string) string {
	return fmt.Sprintf("test-%s-%d-%d/", name, os.Getpid(), prefixSeq.Add(1))
}

// testStorage runs certmagic's storage semantics on e: every method
// against certmagic's own FileStorage as the reference, the value limit,
// locks between goroutines and storages, and TryLock.
func testStorage(t *testing.T, e engine) {
	prefix := uniquePrefix(e.name)
	s := e.open(t, prefix, 0)
	// a second client on the same data: other settings, so that it shares
	// neither the connection nor the held locks with s (like another
	// instance)
	other := e.open(t, prefix, e.ttl)
	ref := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()

	t.Run("semantics", func(t *testing.T) { testSemantics(t, ctx, s, other, ref) })
	t.Run("modified", func(t *testing.T) {
		before := time.Now()
		if err := s.Store(ctx, "m/file", []byte("one")); err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		info, err := other.Stat(ctx, "m/file")
		if err != nil {
			t.Fatal(err)
		}
		if info.Modified.Before(before.Add(-time.Millisecond)) || info.Modified.After(after.Add(time.Millisecond)) {
			t.Errorf("Modified %s, want between %s and %s", info.Modified, before, after)
		}
		if info.Size != 3 || !info.IsTerminal || info.Key != "m/file" {
			t.Errorf("Stat: %+v", info)
		}
		first := info.Modified
		waitUntil(t, time.Second, "the clock to move", func() bool { return time.Now().After(first.Add(time.Millisecond)) })
		if err := s.Store(ctx, "m/file", []byte("second")); err != nil {
			t.Fatal(err)
		}
		info, _ = s.Stat(ctx, "m/file")
		if !info.Modified.After(first) || info.Size != 6 {
			t.Errorf("after a second Store: %+v, first modified %s", info, first)
		}
	})
	t.Run("value limit", func(t *testing.T) {
		big := bytes.Repeat([]byte{'x'}, e.limit)
		if err := s.Store(ctx, "big/at-limit", big); err != nil {
			t.Fatalf("a value of exactly the limit (%d bytes): %v", e.limit, err)
		}
		got, err := other.Load(ctx, "big/at-limit")
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("loading the value at the limit: %d bytes, %v", len(got), err)
		}
		err = s.Store(ctx, "big/over", append(big, 'y'))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes, more than the %d", e.limit+1, e.limit)) {
			t.Fatalf("a value one byte over the limit: %v, want an error naming both sizes", err)
		}
		t.Logf("over the limit: %v", err)
		if s.Exists(ctx, "big/over") {
			t.Error("the refused value was stored")
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Load(cctx, "m/file"); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load with a cancelled context: %v", err)
		}
		if err := s.Lock(cctx, "cancelled"); err == nil {
			t.Error("Lock with a cancelled context succeeded")
		}
	})
	t.Run("lock goroutines", func(t *testing.T) { testLockGoroutines(t, s, other) })
	t.Run("lock wait and trylock", func(t *testing.T) {
		if err := s.Lock(ctx, "held"); err != nil {
			t.Fatal(err)
		}
		if ok, err := other.(certmagic.TryLocker).TryLock(ctx, "held"); ok || err != nil {
			t.Fatalf("TryLock of a held lock: %v, %v; want false, nil", ok, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		start := time.Now()
		err := other.Lock(wctx, "held")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock of a held lock until a deadline: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Lock returned %s after its deadline of 500ms", d)
		}
		if err := other.Unlock(ctx, "held"); err == nil {
			t.Error("Unlock of a lock this storage does not hold succeeded")
		}
		if err := s.Unlock(ctx, "held"); err != nil {
			t.Fatal(err)
		}
		if ok, err := other.(certmagic.TryLocker).TryLock(ctx, "held"); !ok || err != nil {
			t.Fatalf("TryLock of a free lock: %v, %v", ok, err)
		}
		if err := other.Unlock(ctx, "held"); err != nil {
			t.Fatal(err)
		}
		if err := s.Unlock(ctx, "held"); err == nil {
			t.Error("a second Unlock succeeded")
		}
	})
}

// testSemantics applies the same operations to s and to certmagic's
// FileStorage and compares every answer; other reads what s wrote.
func testSemantics(t *testing.T, ctx context.Context, s, other, ref certmagic.Storage) {
	type answer struct {
		Value    string
		Err      string // "" | "not exist" | "error"
		Exists   bool
		Terminal bool
		Size     int64
		List     []string
	}
	classify := func(err error) string {
		switch {
		case err == nil:
			return ""
		case errors.Is(err, fs.ErrNotExist):
			return "not exist"
		default:
			return "error"
		}
	}
	observe := func(st certmagic.Storage, op, key string) answer {
		var a answer
		switch op {
		case "load":
			v, err := st.Load(ctx, key)
			a.Value, a.Err = string(v), classify(err)
		case "exists":
			a.Exists = st.Exists(ctx, key)
		case "stat":
			info, err := st.Stat(ctx, key)
			a.Err = classify(err)
			if err == nil {
				a.Terminal = info.IsTerminal
				if info.IsTerminal {
					a.Size = info.Size
				}
				if info.Key != key {
					a.Value = "stat key " + info.Key
				}
			}
		case "list", "list -r":
			l, err := st.List(ctx, key, op == "list -r")
			slices.Sort(l)
			a.List, a.Err = l, classify(err)
			if len(a.List) == 0 {
				a.List = nil
			}
		}
		return a
	}
	store := func(key, value string) {
		t.Helper()
		for _, st := range []certmagic.Storage{s, ref} {
			if err := st.Store(ctx, key, []byte(value)); err != nil {
				t.Fatalf("%T Store %q: %v", st, key, err)
			}
		}
	}
	del := func(key string) {
		t.Helper()
		for _, st := range []certmagic.Storage{s, ref} {
			if err := st.Delete(ctx, key); err != nil {
				t.Fatalf("%T Delete %q: %v", st, key, err)
			}
		}
	}
	keys := []string{"a", "a/b", "a/b/c.crt", "a/b/c.key", "a/b/c", "a/d.json", "a/e", "a/e/f", "a/e/f/g.txt", "ab", "ab/x", "missing", "a/missing"}
	check := func(stage string) {
		t.Helper()
		for _, key := range keys {
			for _, op := range []string{"load", "exists", "stat", "list", "list -r"} {
				got, want := observe(s, op, key), observe(ref, op, key)
				if op == "load" && want.Err == "error" && observe(ref, "stat", key).Err == "" {
					// FileStorage cannot read a directory (EISDIR); a
					// directory has no value: not exist is the answer
					want.Err = "not exist"
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: %s %q: got %+v, FileStorage %+v", stage, op, key, got, want)
				}
				if o := observe(other, op, key); fmt.Sprint(o) != fmt.Sprint(got) {
					t.Errorf("%s: %s %q through a second client: %+v, first %+v", stage, op, key, o, got)
				}
			}
		}
	}
	check("empty")
	store("a/b/c.crt", "certificate")
	store("a/b/c.key", "key")
	store("a/d.json", `{"x":1}`)
	store("a/e/f/g.txt", "")
	store("ab/x", string([]byte{0, 1, 2, 255, '\n'}))
	check("stored")
	store("a/b/c.crt", "renewed certificate")
	check("overwritten")
	// below a file: nothing there (FileStorage answers ENOTDIR, and
	// Exists true, artifacts of the file system)
	for _, op := range []string{"load", "stat", "list", "list -r"} {
		if a := observe(s, op, "a/b/c.crt/deeper"); a.Err != "not exist" {
			t.Errorf("%s below a file: %+v, want not exist", op, a)
		}
	}
	if s.Exists(ctx, "a/b/c.crt/deeper") {
		t.Error("Exists below a file")
	}
	if err := s.Delete(ctx, "a/b/c.crt/deeper"); err != nil {
		t.Errorf("Delete below a file: %v", err)
	}
	del("missing") // missing: not an error
	check("deleted nothing")
	del("a/b")
	check("deleted a directory")
	del("a/d.json")
	check("deleted a file")
	del("a")
	check("deleted everything under a")
	if v, err := s.Load(ctx, "ab/x"); err != nil || !bytes.Equal(v, []byte{0, 1, 2, 255, '\n'}) {
		t.Errorf("binary value: %q, %v", v, err)
	}
	if err := s.Store(ctx, "", []byte("x")); err == nil {
		t.Error("Store with an empty key succeeded")
	}
	if err := s.Delete(ctx, ""); err == nil {
		t.Error("Delete with an empty key succeeded (it would delete everything)")
	}
	if l, err := s.List(ctx, "", false); err != nil || !slices.Equal(l, []string{"ab"}) {
		t.Errorf("List of the root: %q, %v", l, err)
	}
}

// testLockGoroutines: goroutines of two storages on the same data take the
// same lock in turns; never two hold it at once, and all get it.
func testLockGoroutines(t *testing.T, a, b certmagic.Storage) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var holders, maxHolders, taken atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 4 {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if err := st.Lock(ctx, "contended"); err != nil {
					errs <- err
					return
				}
				n := holders.Add(1)
				for m := maxHolders.Load(); n > m && !maxHolders.CompareAndSwap(m, n); m = maxHolders.Load() {
				}
				taken.Add(1)
				time.Sleep(20 * time.Millisecond) // the critical section: overlap would show
				holders.Add(-1)
				if err := st.Unlock(ctx, "contended"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if maxHolders.Load() != 1 || taken.Load() != 12 {
		t.Errorf("%d acquisitions (want 12), at most %d holders at once (want 1)", taken.Load(), maxHolders.Load())
	}
}

// helperEnv carries the helper process's settings.
const helperEnv = "BETWEEN_SHAREDSTORAGE_HELPER"

// helperConfig is what the helper process needs.
type helperConfig struct {
	Module string         `json:"module"` // "etcd" or "consul"
	Config map[string]any `json:"config"`
	Lock   string         `json:"lock"`
}

// TestLockHelperProcess is not a test: run by testLockProcesses as a
// second process, it takes a lock, says "locked", and releases it when
// told "unlock" on stdin.
func TestLockHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		return
	}
	var hc helperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		t.Fatal(err)
	}
	var m caddy.Module = new(Etcd)
	if hc.Module == "consul" {
		m = new(Consul)
	}
	provision(t, m, hc.Config)
	st := m.(certmagic.Storage)
	if err := st.Lock(context.Background(), hc.Lock); err != nil {
		t.Fatal(err)
	}
	fmt.Println("locked")
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if strings.TrimSpace(line) == "unlock" {
		if err := st.Unlock(context.Background(), hc.Lock); err != nil {
			t.Fatal(err)
		}
		fmt.Println("unlocked")
	}
}

// lockHolder is a helper process holding a lock.
type lockHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startHolder runs the helper process and waits until it holds the lock.
func startHolder(t *testing.T, module string, cfg map[string]any, lock string) *lockHolder {
	t.Helper()
	b, _ := json.Marshal(helperConfig{Module: module, Config: cfg, Lock: lock})
	h := &lockHolder{cmd: exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1"), lines: make(chan string, 16)}
	h.cmd.Env = append(os.Environ(), helperEnv+"="+string(b))
	h.cmd.Stderr = os.Stderr
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stdin, _ = h.cmd.StdinPipe()
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-done
		h.cmd.Wait()
	})
	h.expect(t, "locked", 30*time.Second)
	return h
}

// expect waits for the helper to print want.
func (h *lockHolder) expect(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-h.lines:
			if !ok {
				t.Fatalf("the helper process ended before printing %q", want)
			}
			if line == want {
				return
			}
		case <-deadline:
			t.Fatalf("the helper process did not print %q within %s", want, timeout)
		}
	}
}

// testLockProcesses: a lock held by another process keeps this one out
// until that process releases it, or until its lease/session expires after
// it was killed.
func testLockProcesses(t *testing.T, e engine) {
	prefix := uniquePrefix(e.name + "-proc")
	cfg := e.config(prefix, e.ttl)
	s := e.open(t, prefix, e.ttl)
	ctx := context.Background()
	mustWait := func(t *testing.T) {
		t.Helper()
		if ok, err := s.(certmagic.TryLocker).TryLock(ctx, "fleet"); ok || err != nil {
			t.Fatalf("TryLock while another process holds the lock: %v, %v", ok, err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := s.Lock(wctx, "fleet"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock while another process holds the lock: %v, want the deadline", err)
		}
	}

	t.Run("released", func(t *testing.T) {
		h := startHolder(t, e.name, cfg, "fleet")
		mustWait(t)
		fmt.Fprintln(h.stdin, "unlock")
		h.expect(t, "unlocked", 10*time.Second)
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		start := time.Now()
		if err := s.Lock(lctx, "fleet"); err != nil {
			t.Fatalf("Lock after the other process released it: %v", err)
		}
		t.Logf("%s: lock taken %s after the other process released it", e.name, time.Since(start).Round(time.Millisecond))
		if err := s.Unlock(ctx, "fleet"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("holder killed", func(t *testing.T) {
		h := startHolder(t, e.name, cfg, "fleet")
		mustWait(t)
		// waiting before the kill: the lock must come to the waiter by expiry
		got := make(chan time.Time, 1)
		lctx, cancel := context.WithTimeout(ctx, e.expiry+30*time.Second)
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			err := s.Lock(lctx, "fleet")
			got <- time.Now()
			errc <- err
		}()
		select {
		case <-got:
			t.Fatalf("Lock returned while the other process held the lock: %v", <-errc)
		case <-time.After(500 * time.Millisecond):
		}
		if err := h.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		at := <-got
		if err := <-errc; err != nil {
			t.Fatalf("Lock after the holder was killed: %v (waited %s)", err, time.Since(killed))
		}
		waited := at.Sub(killed)
		t.Logf("%s: holder SIGKILLed; the waiter got the lock %s later (lock_ttl %s, bound %s)", e.name, waited.Round(time.Millisecond), e.ttl, e.expiry)
		if waited > e.expiry+2*time.Second {
			t.Errorf("the lock freed itself %s after the kill, more than %s + 2s", waited, e.expiry)
		}
		if waited < e.ttl/3 {
			t.Errorf("the lock came %s after the kill: sooner than the lease/session could expire (lock_ttl %s)", waited, e.ttl)
		}
		if err := s.Unlock(ctx, "fleet"); err != nil {
			t.Fatal(err)
		}
	})
}

// waitUntil polls cond every 5ms until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestChildren checks the List helper on its own.
func TestChildren(t *testing.T) {
	keys := []string{"a/b/c", "a/b/d", "a/e", "ab/f", "a/g/h/i"}
	for _, tc := range []struct {
		dir       string
		recursive bool
		want      []string
	}{
		{"a", false, []string{"a/b", "a/e", "a/g"}},
		{"a", true, []string{"a/b", "a/b/c", "a/b/d", "a/e", "a/g", "a/g/h", "a/g/h/i"}},
		{"", false, []string{"a", "ab"}},
		{"a/b", false, []string{"a/b/c", "a/b/d"}},
		{"a/e", false, []string{}},
	} {
		if got := children(tc.dir, keys, tc.recursive); !slices.Equal(got, tc.want) {
			t.Errorf("children(%q, recursive %v) = %q, want %q", tc.dir, tc.recursive, got, tc.want)
		}
	}
	if got := cleanKey("/a//b/"); got != "a/b" {
		t.Errorf("cleanKey: %q", got)
	}
}
