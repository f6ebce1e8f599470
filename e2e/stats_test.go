package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

type serverStats struct {
	Active   int64  `json:"active_connections"`
	Total    uint64 `json:"total_connections"`
	Refused  uint64 `json:"refused_connections"`
	Rx       uint64 `json:"rx_total"`
	Tx       uint64 `json:"tx_total"`
	Backends []struct {
		Host  string `json:"host"`
		Port  string `json:"port"`
		Stats struct {
			Live    bool   `json:"live"`
			Total   uint64 `json:"total_connections"`
			Active  int64  `json:"active_connections"`
			Refused uint64 `json:"refused_connections"`
			Rx      uint64 `json:"rx"`
			Tx      uint64 `json:"tx"`
		} `json:"stats"`
	} `json:"backends"`
}

func (c *instance) stats(t testing.TB, server string) serverStats {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers/" + server + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("stats of %s: %d %s", server, resp.StatusCode, body)
	}
	var s serverStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStatsLiveAndAcrossReload(t *testing.T) {
	// the backend sends 1 KB every 50 ms for 3 s after reading a line
	slow := newBackend(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		chunk := make([]byte, 1024)
		for range 60 {
			if _, err := c.Write(chunk); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := staticServer(addr, slow.addr)
	c := startCaddy(t, between(map[string]any{"stats": srv}))

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "go\n")
	received := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, conn)
		received <- n
	}()
	// counters move while the stream is still flowing
	waitFor(t, 2500*time.Millisecond, "rx to grow while data flows", func() bool {
		s := c.stats(t, "stats")
		return s.Rx >= 10*1024 && s.Active == 1
	})
	// the 3 request bytes are counted as soon as they are forwarded
	waitFor(t, 2*time.Second, "tx_total to count the request", func() bool { return c.stats(t, "stats").Tx == 3 })
	mid := c.stats(t, "stats")
	if len(mid.Backends) != 1 || !mid.Backends[0].Stats.Live || mid.Backends[0].Stats.Active != 1 {
		t.Errorf("backend stats mid-stream: %+v", mid.Backends)
	}

	// a reload that leaves the server unchanged keeps the counters and the stream
	other := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if code, body := c.load(between(map[string]any{"stats": srv, "other": staticServer(other, slow.addr)})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	after := c.stats(t, "stats")
	if after.Total != mid.Total || after.Rx < mid.Rx {
		t.Errorf("stats reset by a reload that did not change the server: before %+v, after %+v", mid, after)
	}
	n := <-received
	if n != 60*1024 {
		t.Fatalf("stream got %d bytes, want %d", n, 60*1024)
	}
	conn.Close()
	waitFor(t, 2*time.Second, "final counters", func() bool {
		s := c.stats(t, "stats")
		return s.Rx == 60*1024 && s.Active == 0 && s.Backends[0].Stats.Rx == 60*1024 && s.Backends[0].Stats.Total == 1
	})

	// a changed server takes the counters over too
	changed := staticServer(addr, slow.addr)
	changed["max_connections"] = 10
	if code, body := c.load(between(map[string]any{"stats": changed})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	waitFor(t, 2*time.Second, "the changed server's stats", func() bool {
		s := c.stats(t, "stats")
		return len(s.Backends) == 1 && s.Total == 1 && s.Rx == 60*1024 && s.Backends[0].Stats.Total == 1
	})

	resp, err := http.Get("http://" + c.admin + "/between/servers/nosuch/stats")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("stats of an unknown server: %d, want 404", resp.StatusCode)
	}
}

func TestRefusedConnectionsCounted(t *testing.T) {
	be := newBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := staticServer(addr, be.addr)
	srv["max_connections"] = 1
	c := startCaddy(t, between(map[string]any{"cap": srv}))
	hold, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, 2*time.Second, "the first connection", func() bool { return c.stats(t, "cap").Active == 1 })
	for range 3 {
		ask(addr)
	}
	waitFor(t, 2*time.Second, "3 refusals", func() bool { return c.stats(t, "cap").Refused == 3 })
}
