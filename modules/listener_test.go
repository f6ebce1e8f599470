package modules

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// freeAddr asks the kernel for a free loopback port.
func freeAddr(t *testing.T) caddy.NetworkAddress {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil {
		t.Fatal(err)
	}
	return na
}

// answer returns a handler that writes id to each connection and closes it.
func answer(id string) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		c.Write([]byte(id))
	}
}

// whoAnswers dials addr and returns what the handler wrote.
func whoAnswers(t *testing.T, addr string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestListenShared(t *testing.T) {
	ctx := newTestContext(t)
	logger := zap.NewNop()
	na := freeAddr(t)
	addr := na.JoinHostPort(0)

	expect := func(step, want string) {
		t.Helper()
		got, err := whoAnswers(t, addr)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if got != want {
			t.Fatalf("%s: answered by %q, want %q", step, got, want)
		}
	}

	releaseOld, err := listenShared(ctx, na, 0, logger, answer("old"))
	if err != nil {
		t.Fatal(err)
	}
	defer releaseOld()
	expect("one handler", "old")

	// a reload: the new config registers on the same socket
	releaseNew, err := listenShared(ctx, na, 0, logger, answer("new"))
	if err != nil {
		t.Fatalf("second registration on %s: %v", addr, err)
	}
	defer releaseNew()
	for range 3 {
		expect("after the new registration", "new")
	}

	releaseNew()
	releaseNew() // idempotent
	for range 3 {
		expect("after the newest released", "old")
	}

	releaseOld()
	if got, err := whoAnswers(t, addr); err == nil {
		t.Fatalf("after every release a connection still succeeded (answered %q)", got)
	}

	listenersMu.Lock()
	n := len(listeners)
	listenersMu.Unlock()
	if n != 0 {
		t.Errorf("%d shared listeners left after every release", n)
	}

	// the address is free again: a fresh registration binds it anew
	release, err := listenShared(ctx, na, 0, logger, answer("again"))
	if err != nil {
		t.Fatalf("listening again after release: %v", err)
	}
	expect("new socket", "again")
	release()
}

func TestListenSharedOlderReleasedFirst(t *testing.T) {
	ctx := newTestContext(t)
	logger := zap.NewNop()
	na := freeAddr(t)
	addr := na.JoinHostPort(0)

	releaseOld, err := listenShared(ctx, na, 0, logger, answer("old"))
	if err != nil {
		t.Fatal(err)
	}
	releaseNew, err := listenShared(ctx, na, 0, logger, answer("new"))
	if err != nil {
		t.Fatal(err)
	}
	// the old config stops after the new one started: nothing changes for clients
	releaseOld()
	for range 3 {
		got, err := whoAnswers(t, addr)
		if err != nil || got != "new" {
			t.Fatalf("after the older released: answered %q, %v; want \"new\"", got, err)
		}
	}
	releaseNew()
	if _, err := whoAnswers(t, addr); err == nil {
		t.Fatal("port still open after every release")
	}
}

func TestListenSharedPortRange(t *testing.T) {
	ctx := newTestContext(t)
	na := freeAddr(t)
	// offsets within a range are separate sockets
	release, err := listenShared(ctx, na, 0, zap.NewNop(), answer("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	na2 := na
	na2.StartPort, na2.EndPort = na.StartPort-1, na.StartPort
	release2, err := listenShared(ctx, na2, 1, zap.NewNop(), answer("b"))
	if err != nil {
		t.Fatal(err)
	}
	defer release2()
	if got, err := whoAnswers(t, na.JoinHostPort(0)); err != nil || got != "b" {
		t.Fatalf("port %d with offset 1 of a range: answered %q, %v; want the newest registration \"b\"", na.StartPort, got, err)
	}
}
