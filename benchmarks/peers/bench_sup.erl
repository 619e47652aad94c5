%% The Erlang/OTP peer of benchmarks/compare.py: a one_for_one supervisor over
%% ports, the way an Erlang program supervises an external program.
%%
%% erl -noshell -noinput -pa DIR -run bench_sup main -extra N PROGRAM [ARG...]
%%
%% Starts a supervisor (one_for_one, intensity 1000000 per 1 s, no delay: OTP
%% restarts at once) with N workers.  Each worker opens PROGRAM as a port
%% ({spawn_executable, ...}, exit_status) and exits when the port reports the exit
%% status, so the supervisor starts a new one.  A control socket on 127.0.0.1
%% (its port is printed as "control PORT" on stdout) answers one line per request:
%% "status" -> "active N", "start N" -> starts N more workers, "ok".
-module(bench_sup).
-behaviour(supervisor).

-export([main/0, init/1, start_worker/1, worker/2]).

main() ->
    %% The arguments come after -extra: an argument starting with "-" (--hello)
    %% would end the ones of -run.
    [N | Argv] = init:get_plain_arguments(),
    {ok, Sup} = supervisor:start_link({local, bench_sup}, ?MODULE, []),
    unlink(Sup),
    start_workers(list_to_integer(N), Argv),
    {ok, Listen} = gen_tcp:listen(0, [binary, {ip, {127, 0, 0, 1}}, {packet, line},
                                      {active, false}, {reuseaddr, true}]),
    {ok, Port} = inet:port(Listen),
    io:format("control ~b~n", [Port]),
    accept(Listen, Argv).

init([]) ->
    {ok, {#{strategy => one_for_one, intensity => 1000000, period => 1}, []}}.

start_workers(N, Argv) ->
    Base = length(supervisor:which_children(bench_sup)),
    [{ok, _} = supervisor:start_child(bench_sup,
                                      #{id => Base + I,
                                        start => {?MODULE, start_worker, [Argv]},
                                        restart => permanent,
                                        shutdown => brutal_kill,
                                        type => worker})
     || I <- lists:seq(1, N)],
    ok.

start_worker(Argv) ->
    proc_lib:start_link(?MODULE, worker, [self(), Argv]).

worker(Parent, [Program | Args]) ->
    Port = open_port({spawn_executable, Program}, [{args, Args}, exit_status, binary]),
    proc_lib:init_ack(Parent, {ok, self()}),
    loop(Port).

loop(Port) ->
    receive
        {Port, {exit_status, Status}} -> exit({exit_status, Status});
        {Port, {data, _}} -> loop(Port)
    end.

accept(Listen, Argv) ->
    {ok, Socket} = gen_tcp:accept(Listen),
    Pid = spawn(fun() -> serve(Socket, Argv) end),
    ok = gen_tcp:controlling_process(Socket, Pid),
    accept(Listen, Argv).

serve(Socket, Argv) ->
    case gen_tcp:recv(Socket, 0) of
        {ok, <<"status\n">>} ->
            Counts = supervisor:count_children(bench_sup),
            Active = proplists:get_value(active, Counts),
            ok = gen_tcp:send(Socket, io_lib:format("active ~b~n", [Active])),
            serve(Socket, Argv);
        {ok, <<"start ", Rest/binary>>} ->
            start_workers(binary_to_integer(string:trim(Rest)), Argv),
            ok = gen_tcp:send(Socket, <<"ok\n">>),
            serve(Socket, Argv);
        _ ->
            gen_tcp:close(Socket)
    end.
