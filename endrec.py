import socket, threading, sys
ls=socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); ls.bind(('127.0.0.1',int(sys.argv[1]))); ls.listen(64)
def h(c):
    n=0
    try:
        while True:
            d=c.recv(65536)
            if not d: print('target saw FIN after',n,flush=True); return
            n+=len(d)
    except ConnectionResetError: print('target saw RST after',n,flush=True)
while True:
    c,_=ls.accept(); threading.Thread(target=h,args=(c,),daemon=True).start()
