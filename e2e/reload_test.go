package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoLine writes msg and a newline on c and reads the echo back.
func echoLine(c net.Conn, r *bufio.Reader, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo = %q, want %q", line, msg)
	}
	return nil
}

func TestConnectionSurvivesReload(t *testing.T) {
	be := echoBackend(t)
	other := nameBackend(t, "other")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addr2 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, between(map[string]any{"echo": staticServer(addr, be.addr)}))

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if err := echoLine(conn, r, "before"); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		apps string
	}{
		{"unchanged server, another added", between(map[string]any{"echo": staticServer(addr, be.addr), "other": staticServer(addr2, other.addr)})},
		{"server changed", between(map[string]any{"echo": staticServer(addr, be.addr, other.addr+" weight=0")})},
		{"back to the original", between(map[string]any{"echo": staticServer(addr, be.addr)})},
	}
	for _, step := range steps {
		if code, body := c.load(step.apps); code != 200 {
			t.Fatalf("%s: reload: %d %s", step.name, code, body)
		}
		if err := echoLine(conn, r, "after "+step.name); err != nil {
			t.Fatalf("held connection broken by reload (%s): %v", step.name, err)
		}
		// new connections are served by the new config
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := echoLine(nc, bufio.NewReader(nc), "new"); err != nil {
			t.Fatalf("%s: new connection: %v", step.name, err)
		}
		nc.Close()
	}
}

func TestReloadUnderLoadDropsNothing(t *testing.T) {
	be := echoBackend(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, between(map[string]any{"echo": staticServer(addr, be.addr)}))
	stop := make(chan struct{})
	errs := make(chan error, 4)
	done := make(chan int, 4)
	for w := range 4 {
		go func() {
			n := 0
			defer func() { done <- n }()
			for i := 0; i < 5000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					errs <- fmt.Errorf("worker %d dial %d: %v", w, i, err)
					return
				}
				err = echoLine(nc, bufio.NewReader(nc), fmt.Sprintf("w%d-%d", w, i))
				nc.Close()
				if err != nil {
					errs <- fmt.Errorf("worker %d conn %d: %v", w, i, err)
					return
				}
				n++
			}
		}()
	}
	// alternate between two configs that both change the server
	for i := range 10 {
		srv := staticServer(addr, be.addr)
		srv["max_connections"] = 1000 + i
		if code, body := c.load(between(map[string]any{"echo": srv})); code != 200 {
			t.Fatalf("reload %d: %d %s", i, code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	total := 0
	for range 4 {
		total += <-done
	}
	select {
	case err := <-errs:
		t.Fatalf("a connection failed during reloads: %v", err)
	default:
	}
	if total < 50 {
		t.Fatalf("only %d connections completed during the reloads", total)
	}
	t.Logf("%d connections across 10 reloads, none failed", total)
}

func TestBadReloadKeepsOldConfig(t *testing.T) {
	be := nameBackend(t, "still-here")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCaddy(t, between(map[string]any{"keep": staticServer(addr, be.addr)}))
	bad := staticServer(addr, be.addr)
	bad["client_idle_timeout"] = "soon"
	code, body := c.load(between(map[string]any{"keep": bad}))
	if code == 200 {
		t.Fatal("invalid config was accepted")
	}
	if !strings.Contains(body, "keep") || !strings.Contains(body, "client_idle_timeout") {
		t.Errorf("error %q does not name the server and the field", body)
	}
	if name, err := ask(addr); err != nil || name != "still-here" {
		t.Fatalf("old config stopped serving after a rejected reload: %q, %v", name, err)
	}
}

func TestRemovedServerDrains(t *testing.T) {
	be := echoBackend(t)
	keepBackend := nameBackend(t, "kept")
	gone := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	forever := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	kept := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	drained := staticServer(gone, be.addr)
	drained["drain_timeout"] = "1s"
	c := startCaddy(t, between(map[string]any{
		"drained": drained,
		"forever": staticServer(forever, be.addr), // drain_timeout 0: until the connection ends
		"kept":    staticServer(kept, keepBackend.addr),
	}))
	dc, err := net.Dial("tcp", gone)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dr := bufio.NewReader(dc)
	if err := echoLine(dc, dr, "hi"); err != nil {
		t.Fatal(err)
	}
	fc, err := net.Dial("tcp", forever)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	fr := bufio.NewReader(fc)
	if err := echoLine(fc, fr, "hi"); err != nil {
		t.Fatal(err)
	}

	if code, body := c.load(between(map[string]any{"kept": staticServer(kept, keepBackend.addr)})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	removedAt := time.Now()
	// the removed servers no longer accept
	waitFor(t, 2*time.Second, "the removed server's port to close", func() bool {
		nc, err := net.DialTimeout("tcp", gone, time.Second)
		if err != nil {
			return true
		}
		nc.Close()
		return false
	})
	// both open connections still work right after the removal
	if err := echoLine(dc, dr, "draining"); err != nil {
		t.Fatalf("connection of removed server closed before drain_timeout: %v", err)
	}
	// the drain timeout closes the first one
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := dc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after drain_timeout: read = %v, want EOF", err)
	}
	if d := time.Since(removedAt); d < 800*time.Millisecond || d > 3*time.Second {
		t.Errorf("drained connection closed %s after the reload, want about 1s", d)
	}
	// drain_timeout 0 keeps the other one open
	if err := echoLine(fc, fr, "still open"); err != nil {
		t.Fatalf("connection of removed server with drain_timeout 0 was closed: %v", err)
	}
}
