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
			Live     bool   `json:"live"`
			Total    uint64 `json:"total_connections"`
			Active   int64  `json:"active_connections"`
			Refused  uint64 `json:"refused_connections"`
			Rx       uint64 `json:"rx"`
			Tx       uint64 `json:"tx"`
			RxSecond uint64 `json:"rx_second"`
			TxSecond uint64 `json:"tx_second"`
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
	addr := freeAddr(t)
	srv := staticServer(shared(addr), slow.addr)
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
	other := freeAddr(t)
	if code, body := c.load(between(map[string]any{"stats": srv, "other": staticServer(shared(other), slow.addr)})); code != 200 {
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
	changed := staticServer(shared(addr), slow.addr)
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
	addr := freeAddr(t)
	srv := staticServer(shared(addr), be.addr)
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

// handlerInfo is one entry of GET /between/servers.
type handlerInfo struct {
	Name      string `json:"name"`
	Locations []struct {
		Server   string   `json:"layer4_server"`
		Route    int      `json:"route"`
		Subroute []int    `json:"subroute"`
		Listen   []string `json:"listen"`
	} `json:"locations"`
	Config  map[string]any `json:"config"`
	Active  int64          `json:"active_connections"`
	Total   uint64         `json:"total_connections"`
	Refused uint64         `json:"refused_connections"`
	Rx      uint64         `json:"rx_total"`
	Tx      uint64         `json:"tx_total"`
}

func (c *instance) servers(t testing.TB) []handlerInfo {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /between/servers: %d %s", resp.StatusCode, body)
	}
	var list []handlerInfo
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /between/servers: %v in %s", err, body)
	}
	return list
}

// TestServersListsLocations: GET /between/servers names every handler with
// where it is configured (layer4 server, route, subroute, listen addresses),
// its config and live totals; one name in two routes is one handler with one
// state.
func TestServersListsLocations(t *testing.T) {
	web, db := nameBackend(t, "web"), nameBackend(t, "db")
	front, back := freeAddr(t), freeAddr(t)
	webHandler := betweenHandler("web", staticServer("", web.addr))
	c := startCaddy(t, layer4(map[string]any{
		"front": map[string]any{
			"listen": []string{shared(front)},
			"routes": []any{
				map[string]any{
					"match":  []any{map[string]any{"remote_ip": map[string]any{"ranges": []string{"127.0.0.2"}}}},
					"handle": []any{webHandler},
				},
				map[string]any{"handle": []any{map[string]any{
					"handler": "subroute",
					"routes":  []any{map[string]any{"handle": []any{webHandler}}},
				}}},
			},
		},
		"back": map[string]any{
			"listen": []string{shared(back)},
			"routes": []any{map[string]any{"handle": []any{betweenHandler("db", staticServer("", db.addr))}}},
		},
	}))
	for _, src := range []string{"127.0.0.2", "127.0.0.1", "127.0.0.1"} { // route 0, then the subroute
		if name, err := askFrom(src, front); err != nil || name != "web" {
			t.Fatalf("from %s: %q, %v", src, name, err)
		}
	}
	if name, err := ask(back); err != nil || name != "db" {
		t.Fatalf("db: %q, %v", name, err)
	}
	var list []handlerInfo
	waitFor(t, 2*time.Second, "the totals", func() bool {
		list = c.servers(t)
		return len(list) == 2 && list[0].Total == 1 && list[1].Total == 3 && list[1].Active == 0
	})
	dbInfo, webInfo := list[0], list[1]
	if dbInfo.Name != "db" || webInfo.Name != "web" {
		t.Fatalf("handlers %q, %q, want db, web (sorted by name)", dbInfo.Name, webInfo.Name)
	}
	if len(dbInfo.Locations) != 1 || dbInfo.Locations[0].Server != "back" || dbInfo.Locations[0].Route != 0 ||
		len(dbInfo.Locations[0].Subroute) != 0 || fmt.Sprint(dbInfo.Locations[0].Listen) != fmt.Sprint([]string{shared(back)}) {
		t.Errorf("db locations: %+v", dbInfo.Locations)
	}
	if l := webInfo.Locations; len(l) != 2 ||
		l[0].Server != "front" || l[0].Route != 0 || len(l[0].Subroute) != 0 ||
		l[1].Server != "front" || l[1].Route != 1 || fmt.Sprint(l[1].Subroute) != "[0]" ||
		fmt.Sprint(l[1].Listen) != fmt.Sprint([]string{shared(front)}) {
		t.Errorf("web locations: %+v", l)
	}
	if webInfo.Config["name"] != "web" || webInfo.Config["discovery"] == nil {
		t.Errorf("web config: %v", webInfo.Config)
	}
	if webInfo.Rx != uint64(len("web\n"))*3 {
		t.Errorf("web rx_total %d, want %d", webInfo.Rx, len("web\n")*3)
	}
	// one state: started once, with both places
	if !c.logged("between handler started", map[string]any{"handler": "web"}) {
		t.Error(`no "between handler started" log line for web`)
	}
	// the stats of the shared state agree
	if s := c.stats(t, "web"); s.Total != 3 || len(s.Backends) != 1 || s.Backends[0].Stats.Total != 3 {
		t.Errorf("web stats: %+v", s)
	}
}
