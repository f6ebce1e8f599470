package tcpproxy_test

import (
	"io"
	"testing"
	"time"

	"github.com/caddy-between/between/tcpproxy"
)

const benchBytes = 64 << 20

// BenchmarkProxyTCP pushes 64 MiB per op client->backend through one Proxy
// session over loopback: the splice path between two *net.TCPConn.
func BenchmarkProxyTCP(b *testing.B) { benchProxy(b, false) }

// BenchmarkProxyTCPGeneric is the same with the conns hidden behind a wrapper,
// so Proxy copies through user space: the baseline splice must beat.
func BenchmarkProxyTCPGeneric(b *testing.B) { benchProxy(b, true) }

func benchProxy(b *testing.B, generic bool) {
	var counted int64
	r := startRig(b, tcpproxy.Options{OnTx: func(n int64) { counted += n }}, generic)
	got := make(chan error)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		buf := make([]byte, 1<<20)
		lr := &io.LimitedReader{R: r.backend} // reused: the reader must not allocate per op
		for {
			lr.N = benchBytes
			_, err := io.CopyBuffer(io.Discard, lr, buf)
			select {
			case got <- err:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	chunk := make([]byte, 1<<20)
	b.SetBytes(benchBytes)
	b.ReportAllocs()
	for b.Loop() {
		for sent := 0; sent < benchBytes; sent += len(chunk) {
			if _, err := r.client.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-got; err != nil {
			b.Fatal(err)
		}
	}
	r.client.Close()
	r.backend.Close()
	res, ok := r.wait(5 * time.Second)
	if !ok || res.Tx != counted || res.Tx%benchBytes != 0 {
		b.Fatalf("Result %+v (returned %v), counted %d", res, ok, counted)
	}
}
