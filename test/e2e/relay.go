package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// relay is the guestfwd side of one guest connection: stdin/stdout are the
// guest's TCP stream (QEMU's cmd: forwarding), the other end is the registry
// on 127.0.0.1:port. When the connection ends it appends "<to guest>
// <from guest>" to countFile (one short O_APPEND write, so concurrent relays
// never interleave).
func relay(port int, countFile string) error {
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	up := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(tc, os.Stdin)
		tc.CloseWrite() //nolint:errcheck // the guest finished sending
		up <- n
	}()
	down, _ := io.Copy(os.Stdout, tc)
	tc.Close()
	var sent int64
	select {
	case sent = <-up:
	case <-time.After(time.Second):
	}
	f, err := os.OpenFile(countFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%d %d\n", down, sent)
	return err
}

// relayBytes sums what the relays counted so far: bytes the registry sent to
// the guest, and connections.
func relayBytes(countFile string) (down int64, conns int) {
	data, err := os.ReadFile(countFile)
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			down += v
			conns++
		}
	}
	return down, conns
}
