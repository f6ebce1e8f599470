package healthchecks

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/testutil"
)

// load builds a checker module from JSON as Caddy would: strict decoding,
// Provision, Validate; mustLoad fails the test on error.
var (
	load     = testutil.Loader[Configured]("between.healthchecks.").Load
	mustLoad = testutil.Loader[Configured]("between.healthchecks.").MustLoad
)

// backendAt returns the backend for "host:port".
func backendAt(t testing.TB, hostport string) *backend.Backend {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return &backend.Backend{Host: host, Port: port, Weight: 1, Priority: 1}
}

// freePort returns a loopback port that was free for TCP (and UDP when udp).
func freePort(t testing.TB, udp bool) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if udp {
			pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				l.Close()
				continue
			}
			pc.Close()
		}
		l.Close()
		return port
	}
	t.Fatal("no free port")
	return 0
}

// needBinary finds a real peer's binary (also in /usr/sbin and /sbin). When
// it is missing the test is skipped locally, and fails in CI (CI set), where
// scripts/test.sh installs every peer and nothing may skip.
func needBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, name); fileExists(p) {
				return p
			}
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; scripts/test.sh should have installed it", name)
		}
		t.Skipf("%s is not installed here (apt-get install %s); skipping the real-peer test", name, name)
	}
	return path
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// startProcess starts a daemon in the foreground and stops it (by its PID) at
// cleanup. The returned stop function may be called earlier; it is idempotent.
func startProcess(t testing.TB, path string, args ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command(path, args...)
	var out testutil.LockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("output of %s:\n%s", path, out.String())
		}
	})
	return stop
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialable reports whether a TCP connection to hostport succeeds.
func dialable(hostport string) bool {
	c, err := net.DialTimeout("tcp", hostport, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// processGroupAlive reports whether any non-zombie process is in group pgid
// (zombies count as gone: in containers nobody may reap reparented children).
func processGroupAlive(t testing.TB, pgid int) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state ppid pgrp ...
		if len(f) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}
