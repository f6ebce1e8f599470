package listeners

import (
	"net"
	"testing"
)

// TestKernelDrops: datagrams the kernel drops because nobody reads a full
// receive buffer are found in /proc by the socket's inode.
func TestKernelDrops(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := pc.SetReadBuffer(4096); err != nil { // the kernel doubles it and keeps a floor
		t.Fatal(err)
	}
	if n := kernelDrops(pc); n != 0 {
		t.Fatalf("fresh socket: %d drops", n)
	}
	c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 1024)
	for range 500 { // far more than a few KiB of buffer holds
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	if n := kernelDrops(pc); n == 0 {
		t.Fatal("500 unread datagrams on a small buffer: no drop counted")
	}
}
